"""``denoisekit panorama`` and ``anagram`` end to end on a tiny class-conditional digits run trained here, and
their bad input: one line, exit code 2, nothing written."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoisekit.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "digits-demo.yaml")
TINY = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "model.channels=8",
        "--set", "model.channel_mult=[1,2]", "--set", "model.attention_levels=[]", "--set", "model.mid_attention=false",
        "--set", "model.head_channels=8", "--set", "model.norm_groups=4", "--set", "train.save_every=0",
        "--set", "sample.every=0", "--set", "sample.n=0", "--set", "optim.warmup_steps=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", CONFIG, "--out", str(out), "--quiet", *TINY]) == 0
    return out


def _regions(path, width=32, colours=((0, 0, 0), (255, 255, 255))):
    a = np.zeros((8, width, 3), dtype=np.uint8)
    for k, c in enumerate(colours):
        a[:, k * width // len(colours):(k + 1) * width // len(colours)] = c
    Image.fromarray(a).save(path)
    return str(path)


@pytest.mark.slow  # trains the module's tiny run
def test_panorama_and_anagram_write_their_images(run, tmp_path, capsys):
    base = ["--nfe", "4", "--n", "2"]
    assert main(["panorama", str(run), "--width", "32", "--label", "3", *base, "--out", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as f:
        assert f["images"].shape == (2, 8, 32, 1)
    assert main(["panorama", str(run), "--width", "32", "--label", "3", "--loop", "--method", "syncdiffusion",
                 "--features", "pixels", "--average", "eps", *base, "--out", str(tmp_path / "s.png")]) == 0
    assert main(["panorama", str(run), "--width", "32", "--regions", _regions(tmp_path / "m.png"), "--label", "1",
                 "--label", "7", *base, "--out", str(tmp_path / "r.png")]) == 0
    assert main(["panorama", str(run), "--width", "32", "--label", "3", "--method", "naive", "--average", "xt",
                 *base, "--out", str(tmp_path / "n.png")]) == 0
    out = capsys.readouterr().out
    assert "seam ratio" in out and "syncdiffusion" in out and "4 windows" in out
    assert all((tmp_path / f).is_file() for f in ("s.png", "r.png", "n.png"))
    assert main(["anagram", str(run), "--label", "6", "--label", "9", "--view", "flip", *base,
                 "--out", str(tmp_path / "a.npz")]) == 0
    with np.load(tmp_path / "a.npz") as f:
        assert set(f.files) == {"images", "flip_1"} and f["images"].shape == (2, 8, 8, 1)
        assert np.array_equal(f["flip_1"], f["images"][:, ::-1])  # the second row is the image upside down
    assert main(["anagram", str(run), "--label", "1", "--label", "2", "--label", "3", "--view", "rot90",
                 "--view", "negate", *base, "--out", str(tmp_path / "a.png")]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("argv,message", [
    (["panorama", "--width", "4", "--label", "3"], "smaller than the model's window"),
    (["panorama", "--width", "32", "--stride", "9", "--label", "3"], "stride 9 must be in"),
    (["panorama", "--width", "30", "--stride", "4", "--loop", "--label", "3"], "needs a stride that divides it"),
    (["panorama", "--width", "32", "--regions", "{regions}", "--label", "3"], "1 --label for 2 regions"),
    (["panorama", "--width", "16", "--regions", "{regions}", "--label", "3", "--label", "4"],
     "the canvas is 16x8"),
    (["panorama", "--width", "32", "--prompt", "a cat"], "use --label"),
    (["panorama", "--width", "32", "--label", "3", "--method", "syncdiffusion", "--average", "xt"], "not --average xt"),
    (["anagram", "--label", "6"], "two or more"),
    (["anagram", "--label", "6", "--label", "99"], "--label '99': give one class of this run (0..9"),
    (["anagram", "--label", "6", "--label", "9", "--view", "patch", "--patch", "3"], "must divide"),
])
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, argv, message):
    argv = [a.format(regions=_regions(tmp_path / "m.png")) for a in argv]
    out = tmp_path / "x.png"
    assert main([argv[0], str(run), "--nfe", "2", "--out", str(out), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists(), err
