"""A student's own 2-D points: ``train2d --data points.npy|.npz|.csv`` (or a tensor in Python), the run's own copy,
``sample2d --save-points``, and the Chamfer distance of CS492D beside the Wasserstein distances."""

import json

import numpy as np
import pytest
import torch

from denoisekit.cli import main
from denoisekit.data.toy2d import read_points, sample_toy2d, save_points
from denoisekit.eval.toy2d import chamfer_distance
from denoisekit.train.toy2d import POINTS_FILE, Toy2DConfig, load_run

QUICK = ["--steps", "20", "--batch", "64", "--hidden", "16", "--depth", "1", "--quiet"]


def test_chamfer_is_the_sum_of_squared_nearest_distances_both_ways():
    x, y = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert chamfer_distance(x, y) == pytest.approx(1 + 2 + 1)
    assert chamfer_distance(x, x) == 0
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    assert chamfer_distance(z, z + 0.1, chunk=7) == pytest.approx(chamfer_distance(z, z + 0.1), rel=1e-12)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_points_round_trip(tmp_path, suffix):
    pts = sample_toy2d("moons", 50, 1)
    save_points(tmp_path / f"p{suffix}", pts)
    assert torch.allclose(read_points(tmp_path / f"p{suffix}"), pts, atol=1e-6)


def test_bad_points_files_are_one_line_naming_the_file(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((5, 3)))
    bad = np.zeros((5, 2))
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "p.txt").write_text("1,2\n")
    (tmp_path / "words.csv").write_text("x,y\n1,a\n")
    for name, message in (("three.npy", r"expected an \(N, 2\) array.*shape \(5, 3\)"),
                          ("nan.npy", "row 3 is not finite"), ("p.txt", "unknown extension '.txt'"),
                          ("missing.npy", "does not exist"), ("words.csv", "words.csv")):
        with pytest.raises(ValueError, match=message) as e:
            read_points(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_every_format_refuses_a_wrong_shape_and_non_finite_rows(tmp_path):
    """The issue's bad input, in each format: not (N, 2), NaN or inf, fewer than 2 points, an ambiguous .npz."""
    np.savez(tmp_path / "three.npz", points=np.zeros((5, 3)))
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 2)), b=np.zeros((5, 2)))
    np.save(tmp_path / "flat.npy", np.zeros(10))
    np.save(tmp_path / "one.npy", np.zeros((1, 2)))
    (tmp_path / "three.csv").write_text("x,y,z\n1,2,3\n4,5,6\n")
    (tmp_path / "inf.csv").write_text("x,y\n1,2\n3,inf\n")
    (tmp_path / "nan.csv").write_text("1,2\nnan,4\n5,6\n")
    np.savez(tmp_path / "nan.npz", points=np.array([[0.0, 1.0], [np.nan, 0.0]]))
    for name, message in (("three.npz", r"shape \(5, 3\)"), ("two.npz", "name the points 'points'"),
                          ("flat.npy", r"shape \(10,\)"), ("one.npy", r"N >= 2, got shape \(1, 2\)"),
                          ("three.csv", r"\(N, 2\)|columns"), ("inf.csv", "row 1 is not finite"),
                          ("nan.csv", "row 1 is not finite"), ("nan.npz", "row 1 is not finite")):
        with pytest.raises(ValueError, match=message) as e:
            read_points(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("argv, name", [
    (["train2d", "--data", "{tmp}/points.txt", "--out", "{tmp}/run", "--quiet"], "points.txt"),
    (["train2d", "--data", "{tmp}/nan.csv", "--out", "{tmp}/run", "--quiet"], "nan.csv"),
    (["sample2d", "{tmp}/run", "--save-points", "{tmp}/out.txt"], "out.txt"),
])
def test_cli_bad_points_paths_are_one_line_naming_the_file(tmp_path, capsys, argv, name):
    (tmp_path / "points.txt").write_text("1,2\n3,4\n")
    (tmp_path / "nan.csv").write_text("1,2\nnan,4\n")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err, err
    assert not (tmp_path / "run").exists()


def test_train2d_refuses_a_bad_points_file_and_writes_nothing(tmp_path, capsys):
    np.save(tmp_path / "three.npy", np.zeros((5, 3)))
    assert main(["train2d", "--data", str(tmp_path / "three.npy"), "--out", str(tmp_path / "run"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "three.npy" in err and not (tmp_path / "run").exists()


@pytest.mark.slow  # trains a tiny 2-D model
def test_train_on_a_csv_then_sample_and_save_points(tmp_path, capsys):
    src = tmp_path / "mine.csv"
    save_points(src, sample_toy2d("swissroll", 400, 3))
    run = tmp_path / "run"
    assert main(["train2d", "--data", str(src), "--out", str(run), *QUICK]) == 0
    assert (run / POINTS_FILE).is_file() and (run / "loss.png").is_file()
    src.unlink()  # the run keeps its own copy
    out = tmp_path / "s.npy"
    assert main(["sample2d", str(run), "--n", "100", "--nfe", "4", "--no-nll", "--out", str(tmp_path / "s.png"),
                 "--save-points", str(out)]) == 0
    assert "Chamfer" in capsys.readouterr().out
    samples = read_points(out)
    metrics = json.loads((tmp_path / "s.json").read_text())
    assert samples.shape == (100, 2) and metrics["n_reference"] == 100
    ref = torch.from_numpy(np.load(run / POINTS_FILE))
    assert metrics["chamfer"] > metrics["reference"]["chamfer"] > 0 and len(ref) == 400


@pytest.mark.slow  # trains a tiny 2-D model
def test_train_on_a_tensor_from_python(tmp_path):
    from denoisekit.train.recipes.toy2d import train_toy2d

    pts = sample_toy2d("8gaussians", 256, 0) * 2
    config = Toy2DConfig(out=str(tmp_path / "run"), steps=5, batch=32, model_config={"hidden": 16, "depth": 1})
    run = train_toy2d(config, points=pts, progress=False)
    _, loaded = load_run(run)
    assert loaded.data == str(run / POINTS_FILE) and torch.equal(read_points(run / POINTS_FILE), pts)
    with pytest.raises(ValueError, match=r"finite \(N, 2\)"):
        train_toy2d(config, points=torch.zeros(4, 3), progress=False)
