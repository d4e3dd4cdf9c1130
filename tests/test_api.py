"""``denoisekit.load(run).generate(...)``: the same images as ``denoisekit sample`` from the same seed, labels by
index or stored name, and one writer for grids, npz files and directories of PNGs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import denoisekit
from denoisekit.cli import main
from denoisekit.pipelines.generate import resolve_label

from test_cli_image import CONFIG, TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", CONFIG, "--out", str(out), "--quiet", *TINY]) == 0
    return out


def test_the_root_package_is_light_and_names_what_it_lacks():
    assert denoisekit.DiffusionLoss is not None and callable(denoisekit.save_grid)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        denoisekit.nope  # noqa: B018


def test_resolve_label_takes_indices_names_and_all():
    names = ("circle", "square", "Triangle")
    assert resolve_label("square", names, 3) == 1 and resolve_label("triangle", names, 3) == 2
    assert resolve_label("2", names, 3) == 2 and resolve_label("all", names, 3) == "all"
    assert resolve_label(None, names, 3) is None and resolve_label([0, 2], names, 3) == [0, 2]
    with pytest.raises(ValueError, match="'star'.*0 circle, 1 square, 2 Triangle"):
        resolve_label("star", names, 3)


@pytest.mark.slow  # trains a tiny run
def test_load_generate_matches_the_sample_command(run, tmp_path):
    model = denoisekit.load(run, device="cpu")
    assert "digits" in repr(model) and model.classes == tuple(str(d) for d in range(10))
    out = model.generate(12, label="all", nfe=3, seed=5)
    assert out.images.shape == (12, 1, 8, 8) and out.images.abs().max() <= 1
    assert out.labels.tolist() == [i % 10 for i in range(12)]
    npz = tmp_path / "cli.npz"
    assert main(["sample", str(run), "--n", "12", "--label", "all", "--nfe", "3", "--seed", "5", "--out", str(npz),
                 "--quiet"]) == 0
    saved = out.save(tmp_path / "api.npz")
    assert np.array_equal(np.load(saved)["images"], np.load(npz)["images"])
    assert np.array_equal(np.load(saved)["labels"], np.load(npz)["labels"])
    three = model.generate(4, label="3", nfe=2)
    assert (three.labels == 3).all() and len(three) == 4


@pytest.mark.slow  # trains a tiny run
def test_generated_saves_a_labelled_grid_an_npz_or_one_png_per_image(run, tmp_path):
    out = denoisekit.load(run, device="cpu").generate(20, nfe=2)
    png = out.save(tmp_path / "grid.png")
    w, h = Image.open(png).size
    assert h > 4 * w  # ten labelled rows of two
    files = sorted(out.save(f"{tmp_path}/each/").glob("*.png"))
    assert len(files) == 20 and Image.open(files[0]).size == (8, 8)
    with pytest.raises(ValueError, match="must end in .png or .npz"):
        out.save(tmp_path / "grid.jpg")
    groups, labels = out.groups()
    assert labels == [str(d) for d in range(10)] and all(len(g) == 2 for g in groups)
    bad = type(out)(torch.full_like(out.images, float("nan")), None, None, 4)
    with pytest.raises(FloatingPointError):
        bad.save(tmp_path / "nan.png")
    assert not (tmp_path / "nan.png").exists()


@pytest.mark.slow  # trains a tiny run and a tiny classifier
def test_a_classifier_of_another_size_is_refused(run, tmp_path, capsys):
    clf = tmp_path / "clf16"
    root = Path(CONFIG).parent
    assert main(["train-classifier", str(root / "classifier" / "digits.yaml"), "--out", str(clf), "--quiet",
                 "--set", "data.size=16", "--set", "train.steps=2"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--classifier", str(clf), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "was trained on 1x16x16 images; this model makes 1x8x8" in err and err.count("\n") == 1


@pytest.mark.slow  # trains a tiny super-resolution run
def test_an_image_conditioned_run_restores_and_refuses_generate(tmp_path):
    from test_cli_ux import SR

    (tmp_path / "sr.yaml").write_text(SR % 8)
    assert main(["train", str(tmp_path / "sr.yaml"), "--out", str(tmp_path / "sr"), "--quiet"]) == 0
    run = denoisekit.load(tmp_path / "sr", device="cpu")
    with pytest.raises(ValueError, match="image-conditioned: use run.restore"):
        run.generate(2)
    low = torch.rand(3, 1, 4, 4) * 2 - 1
    a, b = run.restore(low, seed=1), run.restore(low[:2], seed=1)
    assert a.shape == (3, 1, 8, 8) and a.abs().max() <= 1 and torch.equal(a[:2], b)
