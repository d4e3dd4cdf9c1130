"""``denoisekit distill-image`` and ``text-to-3d`` end to end on a tiny class run, and their bad input: one line,
exit code 2, nothing written."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoisekit.cli import main
from denoisekit.io import load_tensors

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "digits-demo.yaml")
TINY = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "model.channels=8",
        "--set", "model.channel_mult=[1,2]", "--set", "model.attention_levels=[]", "--set", "model.mid_attention=true",
        "--set", "model.head_channels=8", "--set", "model.norm_groups=4", "--set", "train.save_every=0",
        "--set", "sample.every=0", "--set", "sample.n=0", "--set", "optim.warmup_steps=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", CONFIG, "--out", str(out), "--quiet", *TINY]) == 0
    return out


@pytest.mark.slow  # trains the module's tiny run
def test_distill_image_methods_and_params(run, tmp_path, capsys):
    for method, param in (("sds", "shapes"), ("vsd", "image"), ("sds", "image")):
        out = tmp_path / f"{method}-{param}.png"
        assert main(["distill-image", str(run), "--prompt", "3", "--method", method, "--param", param, "--n", "2",
                     "--steps", "3", "--kinds", "circle,star", "--out", str(out)]) == 0
        assert out.is_file()
    src = np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "src.npz", images=src)
    out = tmp_path / "pds.npz"
    assert main(["distill-image", str(run), "--prompt", "7", "--method", "pds", "--source", str(tmp_path / "src.npz"),
                 "--source-prompt", "1", "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert set(f.files) == {"source", "pds"} and f["pds"].shape == (2, 8, 8, 1)
    assert "PDS on image toward '7'" in capsys.readouterr().out


@pytest.mark.slow
def test_text_to_3d_writes_gif_and_volume(run, tmp_path):
    out = tmp_path / "scene.gif"
    assert main(["text-to-3d", str(run), "--prompt", "0", "--steps", "2", "--grid", "4", "--views", "2",
                 "--frames", "5", "--out", str(out)]) == 0
    gif = Image.open(out)
    assert gif.n_frames == 5
    vol = load_tensors(tmp_path / "scene.safetensors")
    assert vol["density"].shape == (1, 4, 4, 4) and vol["colour"].shape == (3, 4, 4, 4)
    assert float(vol["density"].min()) >= 0


@pytest.mark.slow
@pytest.mark.parametrize("argv,message", [
    (["distill-image", "--prompt", "3", "--method", "pds", "--out", "{out}.png"], "--source"),
    (["distill-image", "--prompt", "dog", "--out", "{out}.png"], "not a class of this run"),
    (["distill-image", "--prompt", "3", "--out", "{out}.jpg"], "must end in .png or .npz"),
    (["distill-image", "--prompt", "3", "--sigma-min", "3", "--out", "{out}.png"], "--sigma-min"),
    (["distill-image", "--prompt", "3", "--param", "shapes", "--kinds", "hexagon", "--out", "{out}.png"], "circle"),
    (["text-to-3d", "--prompt", "3", "--out", "{out}.png"], "must end in .gif"),
    (["text-to-3d", "--prompt", "3", "--method", "pds", "--out", "{out}.gif"], "invalid choice"),
])
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    argv = [a.format(out=out) for a in argv]
    assert main([argv[0], str(run), *argv[1:], "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not list(tmp_path.iterdir())
