"""The ``denoisekit`` command line: a tiny train2d -> sample2d run end to end, and one-line errors."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from denoisekit.cli import main

TINY = ["--hidden", "32", "--depth", "1", "--emb-dim", "16", "--batch", "128", "--n-train", "5000", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "moons"
    assert main(["train2d", "--data", "moons", "--process", "ddpm", "--prediction", "eps", "--steps", "200",
                 "--seed", "1", "--out", str(out), *TINY]) == 0
    return out


@pytest.mark.slow  # trains (the module's train2d run)
def test_train2d_writes_a_run(run_dir, capsys):
    assert {p.name for p in run_dir.iterdir()} == {"config.json", "model.safetensors", "loss.csv", "loss.png"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["steps"] == 200 and config["seed"] == 1 and config["model_config"]["hidden"] == 32


@pytest.mark.slow  # trains (the module's train2d run)
def test_sample2d_writes_png_json_gif(run_dir, tmp_path, capsys):
    png, gif = tmp_path / "s.png", tmp_path / "traj.gif"
    assert main(["sample2d", str(run_dir), "--sampler", "heun", "--nfe", "9", "--n", "300", "--out", str(png),
                 "--gif", str(gif), "--nll-points", "20", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "W2" in printed and "NLL" in printed
    metrics = json.loads((tmp_path / "s.json").read_text())
    assert metrics["sampler"] == "heun" and metrics["nfe"] == 9 and metrics["steps"] == 5 and metrics["n"] == 300
    for key in ("sliced_wasserstein", "w2", "nll_nats"):
        assert isinstance(metrics[key], float) and metrics[key] == metrics[key]  # a number, not NaN
    assert metrics["reference"]["w2"] > 0 and metrics["nll_points"] == 20
    assert 0.5 < metrics["reference"]["nll_nats"] < 1.5  # the exact moons density (about 0.99 nats)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 5  # one frame per step (heun, 9 NFE: 5 steps)


@pytest.mark.slow  # trains (the module's train2d run)
def test_sample2d_default_sampler_and_metrics_path(run_dir, tmp_path, capsys):
    metrics = tmp_path / "m" / "metrics.json"
    assert main(["sample2d", str(run_dir), "--n", "200", "--out", str(tmp_path / "a.png"), "--no-nll",
                 "--metrics", str(metrics)]) == 0
    data = json.loads(metrics.read_text())
    assert data["sampler"] == "dpmpp_2m" and data["nfe"] == 10 and data["schedule"] == "log_snr"
    assert "nll_nats" not in data and not (tmp_path / "a.json").exists()


def test_list_prints_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("ddpm", "eps", "dpmpp_2m", "karras", "moons", "checkerboard", "gmm", "mlp"):
        assert word in out


@pytest.mark.parametrize("argv, message", [
    (["sample2d", "/nonexistent/run"], "does not exist"),
    (["sample2d", "/nonexistent/run", "--nfe", "0"], "--nfe must be >= 1"),
    (["sample2d", "/nonexistent/run", "--sampler", "dpmpp_9m"], "unknown sampler 'dpmpp_9m'"),
    (["sample2d", "/nonexistent/run", "--schedule", "fancy"], "unknown schedule 'fancy'"),
    (["train2d", "--data", "spiral", "--out", "unused"], "unknown dataset 'spiral'"),
    (["train2d", "--process", "ddpm", "--process-arg", "bogus=1", "--out", "unused"], "process_kwargs"),
    (["train2d", "--loss-weighting", "snr2", "--out", "unused"], "unknown weighting 'snr2'"),
    (["train2d", "--steps", "0", "--out", "unused"], "must be >= 1"),
    (["train2d"], "required: --out"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_error_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("denoisekit: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow  # trains (the module's train2d run)
def test_bad_run_dir_contents(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run_dir / "config.json").read_text().replace('"prediction"', '"pred"'))
    (broken / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    assert main(["sample2d", str(broken), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "prediction" in err


@pytest.mark.slow  # a fresh interpreter (~3 s)
def test_console_entry_point_exit_code():
    # the installed script runs main() through sys.exit; check the same path in a fresh interpreter
    proc = subprocess.run([sys.executable, "-m", "denoisekit.cli", "sample2d", "/nonexistent/run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("denoisekit: error:") and "Traceback" not in proc.stderr
