"""Latent diffusion end to end: encode-once latents (memory and disk cache), training in latent space with
exact resume, decoded sample grids, ``denoisekit sample`` decoding (class + CFG, text), and the errors
for a missing or corrupt autoencoder, mismatched channels or image size, and a changed autoencoder.

The autoencoder is untrained (seeded) with its latent scale fitted to the data: the plumbing is the same
as for a trained one, and it takes milliseconds. Digits 8x8, factor 2: latents 2 x 4 x 4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from denoisekit.cli import main
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.data import DigitsDataset
from denoisekit.eval.plotting import BAND_GAP
from denoisekit.models.autoencoder import Autoencoder, AutoencoderConfig, compute_latent_scale
from denoisekit.train.autoencoder import save_autoencoder
from denoisekit.engine.checkpoint import latest_checkpoint, load_checkpoint
from denoisekit.train.latent import LatentDataset, decode, weights_sha256
from denoisekit.train.run import load_latent_decoder
from denoisekit.train.trainer import Trainer, train_from_config
from denoisekit.train.run import load_run, run_info


def make_autoencoder(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    ae = Autoencoder(AutoencoderConfig(in_channels=1, channels=8, factor=2, norm_groups=4, latent_channels=2,
                                       mid_attention=False)).eval()
    ae.set_latent_scale(*compute_latent_scale(ae, DigitsDataset(size=8).images[:256],
                                              generator=torch.Generator().manual_seed(0)))
    return ae.requires_grad_(False)


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory) -> Path:
    return save_autoencoder(make_autoencoder(), tmp_path_factory.mktemp("ae") / "ae", image_shape=[1, 8, 8])


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DENOISEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "latents"


def base(ae: Path) -> dict:
    return {
        "data": {"name": "digits", "size": 8},
        "model": {"name": "unet", "in_channels": 2, "channels": 8, "channel_mult": [1, 2], "attention_levels": [],
                  "mid_attention": False, "head_channels": 8, "norm_groups": 4, "num_classes": 10},
        "process": {"name": "edm", "prediction": "edm", "sigma_data": 1.0},
        "loss": {"noise_levels": "lognormal", "weighting": "edm"},
        "condition": {"kind": "class", "dropout": 0.2},
        "train": {"steps": 3, "batch_size": 8, "save_every": 0, "log_every": 1},
        "sample": {"n": 10, "nfe": 2, "cfg_scale": 2.0},
        "latent": {"autoencoder": str(ae)},
    }


def make_config(ae: Path, *overrides: str):
    return config_from_dict(apply_overrides(base(ae), overrides))


class Counting:
    """Counts ``Autoencoder.encode`` calls (monkeypatched in) and the images they see."""

    def __init__(self, monkeypatch):
        self.calls, self.images, original = 0, 0, Autoencoder.encode

        def encode(ae, x):
            self.calls, self.images = self.calls + 1, self.images + len(x)
            return original(ae, x)

        monkeypatch.setattr(Autoencoder, "encode", encode)


def test_latent_dataset_encodes_once_and_caches_on_disk(tmp_path, monkeypatch):
    digits, ae = DigitsDataset(size=8), make_autoencoder()
    count = Counting(monkeypatch)
    ds = LatentDataset(digits, ae, identity={"name": "digits"}, cache_dir=tmp_path / "c", batch_size=500)
    assert (count.calls, count.images) == (4, len(digits))  # every image once, in batches
    item = ds[5]
    assert item["image"].shape == (2, 4, 4) == ds.latent_shape and item["label"] == digits[5]["label"]
    # the posterior mode (up to conv round-off: a batch of 1 may take another kernel than a batch of 500)
    assert torch.allclose(item["image"], ae.encode_latents(digits.images[5:6])[0], atol=1e-5)
    [ds[i] for i in range(50)]
    assert count.calls == 5  # (the one above); items come from memory
    again = LatentDataset(digits, ae, identity={"name": "digits"}, cache_dir=tmp_path / "c")
    assert count.calls == 5 and torch.equal(again.mean, ds.mean)  # read from the disk cache
    LatentDataset(digits, ae, identity={"name": "digits", "size": 8}, cache_dir=tmp_path / "c")
    assert count.calls == 5 + 26  # another identity: another key
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2
    # decode inverts the scaling and clamps to the data range
    x = decode(ae, ds.mean[:3])
    assert x.shape == (3, 1, 8, 8) and x.abs().max() <= 1
    assert torch.allclose(x, ae.decode(ds.mean[:3] / ae.scale_factor.float()).clamp(-1, 1), atol=1e-6)


def test_posterior_samples_are_fresh_per_epoch_and_reproducible(tmp_path):
    digits, ae = DigitsDataset(size=8), make_autoencoder()
    ds = LatentDataset(digits, ae, sample_posterior=True, seed=3)
    a = ds[7]["image"]
    ds.set_epoch(1)
    b = ds[7]["image"]
    ds.set_epoch(0)
    assert torch.equal(ds[7]["image"], a) and not torch.equal(a, b)
    assert torch.allclose(ds.std[7] / ae.scale_factor.float(),  # the posterior's own std, scaled
                          ae.encode(digits.images[7:8]).std[0], rtol=1e-5)


def test_flips_cannot_be_cached():
    class Flipping(torch.utils.data.Dataset):
        class config:
            flip_p = 0.5

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.zeros(1, 8, 8)}

    with pytest.raises(ValueError, match="set data.flip_p=0"):
        LatentDataset(Flipping(), make_autoencoder())


@pytest.mark.slow  # trains
def test_train_resume_exactly_and_sample_decoded(ae_dir, tmp_path, cache, monkeypatch, capsys):
    cfg = make_config(ae_dir)
    count = Counting(monkeypatch)
    a = train_from_config(cfg, tmp_path / "a", progress=False)
    encoded = count.calls
    Trainer(cfg, tmp_path / "b", progress=False).fit(stop_at=2)
    Trainer(cfg, tmp_path / "b", resume=True, progress=False).fit()
    assert count.calls == encoded  # runs b and its resume read a's latents from the disk cache
    assert len(list(cache.glob("*.safetensors"))) == 1
    ca, cb = (load_checkpoint(latest_checkpoint(r / "checkpoints")) for r in (a, tmp_path / "b"))
    for part in ("model", "ema"):
        assert ca[part].keys() == cb[part].keys() and all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part])

    info = run_info(a)
    assert info["image_shape"] == (2, 4, 4) and info["latent"]["image_shape"] == [1, 8, 8]
    assert info["latent"]["sha256"] == weights_sha256(make_autoencoder())
    _, config = load_run(a)  # the latent-space denoiser
    assert config.latent.autoencoder == str(ae_dir) and load_latent_decoder(a) is not None
    # the training grid is decoded: 10 labelled classes x 1 image of 8x8 (cells upscaled to 32 px)
    w, h = Image.open(a / "samples.png").size
    assert w > 2 + 34 and h == 2 + 10 * 34 + 9 * BAND_GAP

    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    assert main(["sample", str(a), "--n", "20", "--nfe", "3", "--out", str(png)]) == 0
    assert "latents 2x4x4 decoded to 1x8x8" in capsys.readouterr().out
    # one labelled row per class: a label column, 2 cells of 32 px + pad, a band gap between classes
    w, h = Image.open(png).size
    assert w > 2 + 2 * 34 and h == 2 + 10 * 34 + 9 * BAND_GAP
    for sampler in ("dpmpp_2m", "euler_ancestral"):
        assert main(["sample", str(a), "--n", "6", "--nfe", "3", "--sampler", sampler, "--label", "3",
                     "--cfg", "3", "--out", str(npz)]) == 0
        d = np.load(npz)
        assert d["images"].shape == (6, 8, 8, 1) and d["images"].dtype == np.uint8 and (d["labels"] == 3).all()
    assert main(["sample", str(a), "--classifier", str(tmp_path), "--out", str(png)]) == 2
    assert "guides in pixel space" in capsys.readouterr().err


@pytest.mark.slow  # trains
def test_text_conditional_latent_run(ae_dir, tmp_path):
    cfg = make_config(ae_dir, "data.captions=true", "model.num_classes=null", "model.context_dim=16",
                      "condition.kind=text", "condition.encoder=tokens", "condition.dim=16", "condition.layers=1",
                      "condition.heads=2", "train.steps=1", "sample.n=0")
    run = train_from_config(cfg, tmp_path / "t", progress=False)
    out = tmp_path / "t.npz"
    assert main(["sample", str(run), "--prompt", "a handwritten digit three", "--prompt", "a handwritten digit one",
                 "--n", "4", "--nfe", "2", "--cfg", "2", "--out", str(out)]) == 0
    d = np.load(out)
    assert d["images"].shape == (4, 8, 8, 1) and list(d["prompts"][:2]) == ["a handwritten digit three"] * 2


def test_errors_name_the_autoencoder_and_the_fix(ae_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="latent.autoencoder: autoencoder directory .*nowhere"):
        Trainer(make_config(tmp_path / "nowhere"), tmp_path / "r1", progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(ae_dir, broken)
    weights = broken / "autoencoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match="broken/autoencoder.safetensors"):
        Trainer(make_config(broken), tmp_path / "r2", progress=False)
    assert weights.stat().st_size == 200  # nothing overwritten
    with pytest.raises(ValueError, match=r"model.in_channels is 1, .* latents of shape \(2, 4, 4\).* "
                                         r"set model.in_channels=2"):
        Trainer(make_config(ae_dir, "model.in_channels=1"), tmp_path / "r3", progress=False)
    with pytest.raises(ValueError, match=r"images of shape \(1, 16, 16\) but the autoencoder .* was trained on "
                                         r"\(1, 8, 8\)"):
        Trainer(make_config(ae_dir, "data.size=16"), tmp_path / "r4", progress=False)
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))  # no run directory was started
    with pytest.raises(ValueError, match="does not support condition.kind: image"):
        make_config(ae_dir, "condition.kind=image", "condition.task=colorize", "model.num_classes=null", "sample.cfg_scale=1")


@pytest.mark.slow  # trains
def test_a_changed_autoencoder_is_refused(ae_dir, tmp_path):
    ae = tmp_path / "ae"
    shutil.copytree(ae_dir, ae)
    cfg = make_config(ae, "train.steps=2", "sample.n=0")
    Trainer(cfg, tmp_path / "run", progress=False).fit(stop_at=1)
    save_autoencoder(make_autoencoder(seed=1), ae, image_shape=[1, 8, 8])  # retrained in place
    with pytest.raises(ValueError, match="is not the one .* was trained with"):
        load_latent_decoder(tmp_path / "run")
    with pytest.raises(ValueError, match="cannot resume .* has changed since"):
        Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    shutil.rmtree(ae)
    with pytest.raises(FileNotFoundError, match="its autoencoder is missing"):
        load_latent_decoder(tmp_path / "run")
