"""``denoisekit invert`` and ``p2p`` end to end on a tiny text run (learned token encoder, 2 training steps), and
their bad input: one line, exit code 2, nothing written or overwritten."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoisekit.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "shapes-text.yaml")
TINY = [f"--set={kv}" for kv in (
    "train.steps=2", "train.batch_size=8", "train.save_every=0", "optim.warmup_steps=0", "data.length=32",
    "data.max_shapes=1", "data.cache=false", "model.channels=8", "model.channel_mult=[1,2]", "model.attention_levels=[1]",
    "model.mid_attention=false", "model.head_channels=8", "model.norm_groups=4", "model.context_dim=16",
    "condition.encoder=tokens", "condition.dim=16", "condition.heads=2", "condition.layers=1", "sample.every=0",
    "sample.n=0")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "text"
    assert main(["train", CONFIG, "--out", str(out), "--quiet", *TINY]) == 0
    return str(out)


def _png(path, size=16):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.slow  # trains the module's tiny run
def test_invert_and_p2p_write_side_by_side(run, tmp_path, capsys):
    img = _png(tmp_path / "in.png")
    assert main(["invert", run, "--input", img, "--prompt", "a large red circle in the centre", "--null-text",
                 "--inner-steps", "2", "--nfe", "3", "--cfg", "4", "--out", str(tmp_path / "inv.npz")]) == 0
    assert "null-text w=4" in capsys.readouterr().out
    with np.load(tmp_path / "inv.npz") as f:
        assert set(f.files) == {"input", "w=1", "w=4", "null-text"} and f["w=4"].shape == (1, 16, 16, 3)
    assert main(["p2p", run, "--prompt", "a large red circle", "--edit", "a large blue circle", "--n", "2",
                 "--nfe", "3", "--out", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as f:
        assert set(f.files) == {"source", "edit"} and f["edit"].shape == (2, 16, 16, 3)
    assert main(["p2p", run, "--input", img, "--prompt", "a large red circle", "--edit", "a small red circle",
                 "--mode", "refine", "--inner-steps", "1", "--nfe", "3", "--blend", "large:small",
                 "--out", str(tmp_path / "real.png")]) == 0
    assert "prompt-to-prompt edit(s)" in capsys.readouterr().out and (tmp_path / "real.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["p2p", "RUN", "--prompt", "a red circle", "--edit", "a large red circle"], "use mode refine"),
    (["p2p", "RUN", "--prompt", "a red circle", "--edit", "a red circle", "--mode", "reweight", "--weight", "blue=2"],
     "'blue' is not in the prompt"),
    (["p2p", "RUN", "--prompt", "a red circle", "--edit", "a red circle", "--mode", "reweight", "--weight", "red=x"],
     "the scale must be a number"),
    (["p2p", "RUN", "--prompt", "a red circle", "--edit", "a blue circle", "--input", "SMALL"], "this run makes 16x16"),
    (["invert", "RUN", "--input", "SMALL"], "this run makes 16x16"),
    (["invert", "RUN", "--input", "IMG", "--inner-steps", "-1"], "--inner-steps must be >= 0"),
    (["p2p", "RUN", "--prompt", "a red circle", "--edit", "a blue circle", "--cross-steps", "2"], "must be in [0, 1]"),
])
def test_bad_input_is_one_line_and_overwrites_nothing(run, tmp_path, capsys, argv, message):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep")
    files = {"RUN": run, "SMALL": _png(tmp_path / "small.png", 8), "IMG": _png(tmp_path / "img.png")}
    assert main([files.get(a, a) for a in argv] + ["--nfe", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert out.read_bytes() == b"keep"
