"""`denoisekit eval` against any data: --ref accepts every dataset spec, a self-supervised feature network is
trained on the reference (cached by its hash), and every number has a real-vs-real floor beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from denoisekit.cli import main
from denoisekit.data import ShapesConfig, ShapesDataset
from denoisekit.eval.report import evaluate
from denoisekit.eval.selfsup import SelfSupConfig

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = SelfSupConfig(steps=60)  # ~10 s on one thread; enough to separate blur from real


def _u8(x: torch.Tensor) -> np.ndarray:
    return ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A user's folder of 240 shapes PNGs, 160 fresh renders as samples, and a cache directory."""
    root = tmp_path_factory.mktemp("anydata")
    ds = ShapesDataset(ShapesConfig(size=32, length=400, seed=3))
    u8 = _u8(torch.stack([ds[i]["image"] for i in range(400)]))
    (root / "mine").mkdir()
    for i in range(240):
        Image.fromarray(u8[i]).save(root / "mine" / f"{i:04d}.png")
    np.savez(root / "mine.npz", images=u8[:240])
    return root, torch.from_numpy(u8[240:]), root / "cache"


def _blur(u8: torch.Tensor, s: float) -> np.ndarray:
    x = u8.permute(0, 3, 1, 2).float() / 127.5 - 1
    k = 2 * round(2 * s) + 1
    g = torch.exp(-(torch.arange(k) - k // 2) ** 2 / (2 * s * s))
    g = (g / g.sum()).to(x.dtype)
    x = F.conv2d(F.pad(x, (k // 2,) * 4, mode="reflect"), g.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, g.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)
    return _u8(x.clamp(-1, 1))


def test_selfsup_separates_degraded_from_real_and_is_cached(data):
    root, fresh, cache = data
    first = evaluate(_blur(fresh, 0.6), root / "mine", features="selfsup", selfsup=QUICK, cache_dir=cache)
    info = first["feature_network_info"]
    assert info["kind"] == "selfsup" and info["cache_status"] == "trained"
    assert "self-supervised network trained on" in first["feature_network"] and info["hash"] in first["feature_network"]
    fids = [first["fid"]] + [evaluate(_blur(fresh, s), root / "mine", features="selfsup", selfsup=QUICK,
                                      cache_dir=cache)["fid"] for s in (1.2, 2.0)]
    floor = first["floor"]["fid"]
    assert fids == sorted(fids), fids  # monotone in the blur strength
    assert fids[-1] > 3 * floor, (fids, floor)
    second = evaluate(fresh.numpy(), root / "mine", features="selfsup", selfsup=QUICK, cache_dir=cache)
    assert second["feature_network_info"]["cache_status"] == "loaded"
    assert second["feature_network_info"]["hash"] == info["hash"]
    assert second["floor"] == first["floor"]  # the same network and split: the same floor
    assert second["fid"] < fids[-1]


@pytest.mark.parametrize("spec", ["folder", "npz", "shapes"])
def test_cli_ref_accepts_dataset_specs(data, spec, tmp_path, monkeypatch, capsys):
    root, fresh, cache = data
    monkeypatch.setenv("DENOISEKIT_CACHE", str(cache))
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=fresh.numpy())
    ref = {"folder": str(root / "mine"), "npz": str(root / "mine.npz"), "shapes": "shapes"}[spec]
    out = tmp_path / "m.json"
    assert main(["eval", str(samples), "--ref", ref, "--features", "selfsup", "--ref-limit", "240",
                 "--selfsup", "steps=5", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "real-real" in text and "self-supervised network trained on" in text
    m = json.loads(out.read_text())
    assert m["n_ref"] == 240 and set(m["floor"]) >= {"fid", "kid", "precision", "recall"}


def test_bad_ref_is_one_line_listing_what_is_accepted(data, tmp_path, capsys):
    _, fresh, _ = data
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=fresh.numpy())
    for bad in ("nosuchset", str(tmp_path / "missing"), "folder"):
        assert main(["eval", str(samples), "--ref", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "a folder of images" in err and "shapes" in err, err


def test_bad_selfsup_key_and_features_are_one_line(data, tmp_path, capsys):
    root, fresh, _ = data
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=fresh.numpy())
    assert main(["eval", str(samples), "--ref", str(root / "mine"), "--selfsup", "stepz=3"]) == 2
    assert "allowed: image_size" in capsys.readouterr().err
    assert main(["eval", str(samples), "--ref", str(root / "mine"), "--features", "vgg"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "selfsup" in err


def test_grey_samples_against_rgb_network_warn_naming_both(data):
    root, fresh, cache = data
    grey = fresh.float().mean(-1, keepdim=True).round().byte().numpy()
    with pytest.warns(UserWarning, match="samples have 1 channel"):
        evaluate(grey, root / "mine.npz", features="selfsup", selfsup=SelfSupConfig(steps=5), cache_dir=cache)
    with pytest.warns(UserWarning, match=r"samples are 16x16.*reads 32x32"):
        evaluate(fresh.numpy()[:, ::2, ::2], root / "mine.npz", features="selfsup", selfsup=SelfSupConfig(steps=5),
                 cache_dir=cache)


def test_report_gives_the_runs_total_training_time_and_the_floor(tmp_path, monkeypatch):
    """report.md takes the time from the latest checkpoint's state.json (the engine's total over every resume),
    not from the log rows written since the last resume; it names the feature network and shows the floor."""
    from pathlib import Path

    config = str(Path(__file__).resolve().parents[1] / "configs" / "digits-unet.yaml")
    tiny = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "data.size=8", "--set", "model.channels=8",
            "--set", "model.channel_mult=[1,2]", "--set", "model.attention_levels=[]", "--set",
            "model.mid_attention=false", "--set", "model.head_channels=8", "--set", "model.norm_groups=4",
            "--set", "sample.every=0", "--set", "sample.n=0"]
    run = tmp_path / "run"
    assert main(["train", config, "--out", str(run), "--quiet", *tiny]) == 0
    state = next(run.glob("checkpoints/*/state.json"))
    st = json.loads(state.read_text())
    st["elapsed_s"] = 4321.0  # as after resumes: the engine carries the total in state.json
    state.write_text(json.dumps(st))
    metrics = {"fid": 2.5, "kid": 0.01, "precision": 0.9, "recall": 0.8, "n_samples": 10, "n_compared": 10,
               "n_ref_kept": 20, "ref": "mine", "feature_network": "self-supervised network trained on mine",
               "floor": {"fid": 0.5, "kid": 0.0, "precision": 0.95, "recall": 0.9}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "in 4321 s" in text
    assert "digits feature network" not in text and "self-supervised network trained on mine" in text
    assert "| FID | 2.5 | 0.5 |" in text
