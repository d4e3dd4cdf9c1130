"""The image commands end to end on a tiny run: train -> sample (.png, .npz) -> eval -> report; tune -> sample
--solver; sample --schedule file:PATH."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoisekit.cli import main
from denoisekit.samplers.tuning.grid import save_sigmas
from denoisekit.samplers.tuning.solver import load_solver

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "digits-unet.yaml")

TINY = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "data.size=8",
        "--set", "model.channels=8", "--set", "model.channel_mult=[1,2]", "--set", "model.attention_levels=[]",
        "--set", "model.mid_attention=false", "--set", "model.head_channels=8", "--set", "model.norm_groups=4",
        "--set", "train.save_every=0", "--set", "sample.every=0", "--set", "sample.n=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", CONFIG, "--out", str(out), "--quiet", *TINY]) == 0
    return out


@pytest.mark.slow  # trains (the module's CLI train run)
def test_sample_png_grid_has_one_row_per_class(run, tmp_path):
    png = tmp_path / "grid.png"
    assert main(["sample", str(run), "--n", "20", "--nfe", "2", "--out", str(png)]) == 0
    w, h = Image.open(png).size
    assert h > 4 * w  # 10 rows of 2 images


@pytest.mark.slow  # trains (the module's CLI train run)
def test_sample_npz_and_eval_and_report(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DENOISEKIT_CACHE", str(tmp_path / "cache"))
    npz = run / "samples.npz"
    assert main(["sample", str(run), "--n", "30", "--nfe", "2", "--label", "3", "--out", str(npz)]) == 0
    data = np.load(npz)
    assert data["images"].shape == (30, 8, 8, 1) and data["images"].dtype == np.uint8
    assert (data["labels"] == 3).all()
    assert main(["eval", str(npz), "--ref", "digits", "--json", str(run / "metrics.json")]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"fid", "kid", "precision", "recall", "classifier_accuracy"} <= metrics.keys()
    assert main(["report", str(run)]) == 0
    assert "FID" in (run / "report.md").read_text()


@pytest.mark.slow  # trains (the module's CLI train run)
def test_batch_size_does_not_change_samples(run, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", str(run), "--n", "10", "--nfe", "3", "--batch", "10", "--out", str(a)]) == 0
    assert main(["sample", str(run), "--n", "10", "--nfe", "3", "--batch", "3", "--out", str(b)]) == 0
    assert np.array_equal(np.load(a)["images"], np.load(b)["images"])


@pytest.mark.slow  # trains (the module's CLI train run)
@pytest.mark.parametrize("args, message", [
    (["--label", "12"], "out of range: this model has classes 0..9"),
    (["--label", "seven"], "must be an integer in 0..9"),
    (["--sampler", "dpm_fast"], "unknown sampler"),
    (["--nfe", "0"], "NFE must be an integer >= 1"),
    (["--out", "x.jpg"], "must end in .png or .npz"),
])
def test_sample_bad_input(run, args, message, capsys):
    argv = ["sample", str(run), "--out", "x.png", *args] if "--out" not in args else ["sample", str(run), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("denoisekit: error:") and message in err and "Traceback" not in err


def test_train_bad_input(tmp_path, capsys):
    assert main(["train", CONFIG, "--out", str(tmp_path / "r"), "--set", "model.chanels=3"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing"), "--out", "x.png"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------- tune -> sample --solver, --schedule file:PATH

@pytest.mark.slow  # trains (the module's CLI train run)
def test_tune_then_sample_with_the_solver(run, tmp_path, capsys):
    solver = tmp_path / "solver.json"
    assert main(["tune", str(run), "--nfe", "3", "--out", str(solver), "--samples", "20", "--eval-samples", "10",
                 "--iters", "3", "--batch", "10"]) == 0
    printed = capsys.readouterr().out
    assert "mean error" in printed and "dpmpp_2m, karras grid" in printed and "10 held-out samples" in printed
    learned = load_solver(solver)
    assert learned.nfe == 3 and learned.meta["nfe"] == 3 and learned.meta["cfg_scale"] == 2.0
    meta = json.loads(solver.read_text())["meta"]
    assert meta["error"] >= 0 and meta["baseline_error"] >= 0 and len(meta["weights_sha256"]) == 64
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--solver", str(solver), "--n", "10", "--label", "2", "--out", str(out)]) == 0
    assert "learned solver" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["images"].shape == (10, 8, 8, 1) and (f["labels"] == 2).all()
    assert main(["sample", str(run), "--solver", str(solver), "--nfe", "5", "--out", str(out)]) == 2
    assert "--solver sets the sampler, its grid and NFE: drop --nfe" in capsys.readouterr().err
    assert main(["sample", str(run), "--solver", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert "cannot read a denoisekit.solver file" in capsys.readouterr().err


@pytest.mark.slow  # trains (the module's CLI train run)
def test_sample_with_a_grid_file(run, tmp_path, capsys):
    grid = tmp_path / "grid.json"
    save_sigmas(grid, [80.0, 5.0, 0.5, 0.0], {"sampler": "dpmpp_2m"})
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", str(run), "--schedule", f"file:{grid}", "--n", "10", "--out", str(a)]) == 0
    assert f"dpmpp_2m, 3 NFE, file:{grid}" in capsys.readouterr().out
    assert main(["sample", str(run), "--schedule", f"file:{grid}", "--n", "10", "--batch", "4", "--out", str(b)]) == 0
    assert np.array_equal(np.load(a)["images"], np.load(b)["images"])
    assert main(["sample", str(run), "--schedule", f"file:{tmp_path / 'missing.json'}", "--out", str(a)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sample", str(run), "--schedule", "cosine", "--out", str(a)]) == 2
    assert "or file:PATH" in capsys.readouterr().err


def test_tune_bad_input(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "missing"), "--nfe", "5", "--out", str(tmp_path / "s.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["tune", str(tmp_path), "--nfe", "0", "--out", str(tmp_path / "s.json")]) == 2
    assert "must be >= 1" in capsys.readouterr().err
