"""``denoisekit edit``, ``inpaint`` and ``restore`` end to end on a tiny unconditional run, and their bad input:
one line, exit code 2, nothing written."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from denoisekit.cli import main
from denoisekit.generation import LoadedModel
from denoisekit.pipelines.inverse import check_prior
from denoisekit.process import get_process

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "digits-demo.yaml")
TINY = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "model.channels=8",
        "--set", "model.channel_mult=[1,2]", "--set", "model.attention_levels=[]", "--set", "model.mid_attention=false",
        "--set", "model.head_channels=8", "--set", "model.norm_groups=4", "--set", "train.save_every=0",
        "--set", "sample.every=0", "--set", "sample.n=0", "--set", "condition.kind=none",
        "--set", "model.num_classes=null", "--set", "sample.cfg_scale=1", "--set", "optim.warmup_steps=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", CONFIG, "--out", str(out), "--quiet", *TINY]) == 0
    return out


def _png(path, size=8, value=None):
    a = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8) if value is None else \
        np.full((size, size), value, dtype=np.uint8)
    Image.fromarray(a).save(path)
    return str(path)


@pytest.mark.slow  # trains the module's tiny run
def test_edit_inpaint_restore_write_side_by_side(run, tmp_path, capsys):
    img = _png(tmp_path / "in.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["edit", str(run), "--input", img, "--strength", "0.5", "--nfe", "4",
                 "--out", str(tmp_path / "e.png")]) == 0
    assert main(["inpaint", str(run), "--input", img, "--mask", str(tmp_path / "mask.png"), "--method", "repaint",
                 "--nfe", "6", "--out", str(tmp_path / "i.png")]) == 0
    assert main(["restore", str(run), "--input", img, "--task", "sr4", "--noise", "0.05", "--method", "dps",
                 "--nfe", "4", "--out", str(tmp_path / "r.npz")]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "data residual" in out
    with np.load(tmp_path / "r.npz") as f:
        assert set(f.files) == {"input", "measurement", "dps"} and f["dps"].shape == (1, 8, 8, 1)
    w, h = Image.open(tmp_path / "i.png").size
    assert h > w / 4  # rows: measurement, result (no truth given with a mask: the input is the measurement)
    # outpainting: an input smaller than the run's images, no mask
    assert main(["inpaint", str(run), "--input", _png(tmp_path / "small.png", 4), "--nfe", "6",
                 "--out", str(tmp_path / "o.png")]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("argv,message", [
    (["edit", "--strength", "1.5"], "strength must be in [0, 1]"),
    (["inpaint", "--mask", "{black}"], "no missing pixels"),
    (["inpaint", "--mask", "{white}"], "no known pixels"),
    (["inpaint", "--mask", "{big}"], "this run makes 8x8 images"),
    (["restore", "--task", "sr3"], "invalid choice"),
    (["restore", "--task", "sr4", "--noise", "-1"], "must be >= 0"),
])
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, argv, message):
    files = {"black": _png(tmp_path / "b.png", value=0), "white": _png(tmp_path / "w.png", value=255),
             "big": _png(tmp_path / "big.png", 16)}
    argv = [a.format(**files) for a in argv]
    out = tmp_path / "x.png"
    assert main([argv[0], str(run), "--input", _png(tmp_path / "in.png"), "--out", str(out), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists()


def test_latent_and_palette_runs_are_not_priors():
    class Den(nn.Module):
        process = get_process("edm")

        def forward(self, y, sigma, cond=None):
            return y

    with pytest.raises(ValueError, match="latent run"):
        check_prior(LoadedModel(Den(), (4, 2, 2), decoder=nn.Identity()), "dps")
    with pytest.raises(ValueError, match="allowed"):
        check_prior(LoadedModel(Den(), (1, 2, 2)), "magic")
    assert check_prior(LoadedModel(Den(), (1, 2, 2)), "daps") is None
