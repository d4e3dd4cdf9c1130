"""The command line as a newcomer meets it (issue 18): ``--device``, chained super-resolution stages, grids a
person can read (near-square, labelled rows), class names for ``--label``, ``--version``, ``--quiet`` and help
on every option, ``train2d``'s ``loss.png``, one final line per launch, TensorBoard images, ``--out DIR/``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from denoisekit import __version__
from denoisekit.cli import build_parser, main
from denoisekit.cli.common import UsageError, resolve_device, say
from denoisekit.eval.plotting import grid_columns, grid_image

UNET = ("model: {name: unet, in_channels: %d, channels: 8, channel_mult: [1, 2], num_res_blocks: 1, "
        "attention_levels: [], mid_attention: false, head_channels: 8, norm_groups: 4%s}\n")
# Class-conditional on shapes (class names: the first shape's kind), 2 steps; one preview grid for TensorBoard.
SHAPES_CLASS = ("data: {name: shapes, size: 8, length: 64, max_shapes: 1, return_masks: false}\n"
                + UNET % (3, ", num_classes: 6") +
                "process: {name: edm, prediction: edm}\ncondition: {kind: class, dropout: 0.1}\n"
                "train: {steps: 2, batch_size: 8, save_every: 0}\nsample: {n: 6, every: 2, nfe: 2}\n")
# Two x2 super-resolution stages on digits: 4 -> 8 and 8 -> 16.
SR = ("data: {name: digits, size: %d}\n" + UNET % (1, ", concat_channels: 2") +
      "process: {name: edm, prediction: edm}\ncondition: {kind: image, task: super_resolution, factor: 2}\n"
      "train: {steps: 2, batch_size: 8, save_every: 0}\nsample: {n: 0, every: 0, nfe: 2, sampler: euler}\n")


def _train(tmp_path_factory, name: str, text: str):
    root = tmp_path_factory.mktemp(name)
    (root / "config.yaml").write_text(text)
    assert main(["train", str(root / "config.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    return _train(tmp_path_factory, "shapes", SHAPES_CLASS)


@pytest.fixture(scope="module")
def sr_runs(tmp_path_factory):
    return _train(tmp_path_factory, "sr8", SR % 8), _train(tmp_path_factory, "sr16", SR % 16)


def _one_line_error(capsys, *messages):
    err = capsys.readouterr().err
    assert err.startswith("denoisekit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for m in messages:
        assert m in err, err


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# ----------------------------------------------------------------------------------------- consistency

def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"denoisekit {__version__}"


def test_every_option_of_every_command_has_help_and_quiet_exists():
    for name, p in _subparsers().items():
        dests = {a.dest for a in p._actions}
        assert "quiet" in dests, name
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help and a.help.strip(), f"{name} {a.option_strings[0]} has no help"


def test_the_final_line_prints_once_under_a_launcher(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")  # accelerate launch / torchrun: a process other than the first
    say("trained")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    say("trained")
    assert capsys.readouterr().out == "trained\n"


@pytest.mark.slow  # trains 2-D (a second)
def test_train2d_writes_loss_png_and_sample2d_takes_a_device(tmp_path, capsys):
    run = tmp_path / "moons"
    assert main(["train2d", "--data", "moons", "--steps", "20", "--out", str(run), "--quiet"]) == 0
    with Image.open(run / "loss.png") as im:
        assert im.size[0] > 100
    assert main(["sample2d", str(run), "--n", "64", "--nfe", "2", "--no-nll", "--device", "cpu",
                 "--out", str(tmp_path / "s.png"), "--quiet"]) == 0
    assert main(["sample2d", str(run), "--device", "tpu", "--out", str(tmp_path / "s.png")]) == 2
    _one_line_error(capsys, "--device 'tpu': unknown device; allowed: auto, cpu, cuda, cuda:N")


# ---------------------------------------------------------------------------------------------- device

def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(UsageError, match="no such CUDA device on this machine .0 found.; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(UsageError, match="unknown device; allowed: auto, cpu, cuda, cuda:N"):
        resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")


def test_training_commands_take_device_as_the_train_device_override():
    for command in ("train", "train-classifier", "train-autoencoder"):
        args = build_parser().parse_args([command, "x.yaml", "--out", "o", "--device", "cpu", "--set", "a.b=1"])
        assert args.set == ["train.device=cpu", "a.b=1"], command
    assert build_parser().parse_args(["train", "x.yaml", "--out", "o"]).set == []  # default: the config's


@pytest.mark.slow  # trains (the module's tiny shapes run)
def test_load_run_loads_onto_the_device(shapes_run):
    from denoisekit.train.run import load_model, load_run

    den, _ = load_run(shapes_run, device="meta")  # any device but the CPU shows the move
    assert {p.device.type for p in den.parameters()} == {"meta"}
    assert load_model(shapes_run, device="cpu").device == torch.device("cpu")


@pytest.mark.slow  # trains (the module's tiny shapes run)
def test_sample_device_errors_are_one_line(shapes_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["sample", str(shapes_run), "--device", "cuda", "--out", str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys, "--device 'cuda': no such CUDA device on this machine")
    assert main(["sample", str(shapes_run), "--n", "2", "--nfe", "2", "--device", "auto",
                 "--out", str(tmp_path / "x.npz")]) == 0


# ------------------------------------------------------------------------------------------ --label NAME

@pytest.mark.slow  # trains (the module's tiny shapes run)
def test_label_takes_a_stored_class_name(shapes_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(shapes_run), "--label", "triangle", "--n", "3", "--nfe", "2", "--out", str(out)]) == 0
    assert np.load(out)["labels"].tolist() == [2, 2, 2]
    assert main(["sample", str(shapes_run), "--label", "Star", "--n", "2", "--nfe", "2", "--out", str(out)]) == 0
    assert np.load(out)["labels"].tolist() == [3, 3]  # case does not matter when nothing matches exactly
    assert main(["sample", str(shapes_run), "--label", "stripes", "--out", str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys, "--label 'stripes': labels must be an integer in 0..5, 'all', or a class name",
                    "its classes: 0 circle, 1 square, 2 triangle, 3 star, 4 diamond, 5 cross")


# ----------------------------------------------------------------------------------------------- grids

def test_grid_columns_are_near_square():
    assert grid_columns([40]) == 7  # one prompt of 40: 7 x 6, not a 1 x 40 strip
    assert grid_columns([10] * 10) == 10 and grid_columns([2] * 10) == 2  # one row per class
    assert grid_columns([20, 20]) == 7  # two prompts of 20: each 3 rows of 7
    assert grid_columns([64] * 3) == 13  # input / output / truth of 64: 5 bands of 3 rows x 13


def _dark_fraction(img: Image.Image, box: tuple[int, int, int, int]) -> float:
    return float((np.asarray(img.convert("L").crop(box)) < 128).mean())


def test_grid_labels_are_drawn_in_a_left_column():
    groups = [torch.ones(4, 1, 8, 8) for _ in range(3)]  # white images: dark pixels are the labels' text
    plain = grid_image(groups)
    labelled = grid_image(groups, labels=["circle", "a small blue star in the centre of a field of grass", "x"])
    assert labelled.size[1] == plain.size[1] and labelled.size[0] > plain.size[0] + 20
    margin = labelled.size[0] - plain.size[0]
    assert _dark_fraction(labelled, (0, 0, margin, labelled.size[1])) > 0.01
    assert _dark_fraction(plain, (0, 0, plain.size[0], plain.size[1])) == 0
    with pytest.raises(ValueError, match="2 labels for 3 groups"):
        grid_image(groups, labels=["a", "b"])
    with pytest.raises(ValueError, match="aligned rows need groups of one size"):
        grid_image([torch.ones(2, 1, 8, 8), torch.ones(3, 1, 8, 8)], aligned=True)


@pytest.mark.slow  # trains (the module's tiny shapes run)
def test_sample_grid_of_one_class_is_near_square_and_labelled(shapes_run, tmp_path):
    png = tmp_path / "one.png"
    assert main(["sample", str(shapes_run), "--label", "star", "--n", "16", "--nfe", "2", "--out", str(png)]) == 0
    w, h = Image.open(png).size
    assert 0.7 < w / h < 3  # 4 x 4 images and the label column, not a 1 x 16 strip
    png = tmp_path / "all.png"
    assert main(["sample", str(shapes_run), "--n", "12", "--nfe", "2", "--out", str(png)]) == 0
    w, h = Image.open(png).size
    assert h > 6 * 32 and w < 4 * 34 + 80  # one labelled row of 2 per class: 6 rows of 32-pixel cells


@pytest.mark.slow  # trains (the module's tiny shapes run)
def test_sample_out_directory_writes_one_png_per_image(shapes_run, tmp_path):
    out = tmp_path / "pngs"
    assert main(["sample", str(shapes_run), "--n", "5", "--nfe", "2", "--out", f"{out}/"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:05d}.png" for i in range(5)]
    with Image.open(out / files[0]) as im:
        assert im.size == (8, 8) and im.mode == "RGB"


@pytest.mark.slow  # trains (the module's tiny shapes run)
def test_tensorboard_gets_the_preview_grid(shapes_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(shapes_run / "tb"), size_guidance={"images": 0})
    ea.Reload()
    assert "samples" in ea.Tags()["images"]
    assert [e.step for e in ea.Images("samples")] == [2]


# --------------------------------------------------------------------------------- chained super-resolution

@pytest.mark.slow  # trains (the module's tiny SR runs)
def test_super_resolution_stages_chain_through_images(sr_runs, tmp_path, capsys):
    sr8, sr16 = sr_runs
    low = (np.arange(3 * 16, dtype=np.uint8).reshape(3, 4, 4, 1) * 5)
    np.savez(tmp_path / "low.npz", images=low)  # 4x4 'images' for a 4 -> 8 model: the low-res inputs
    np.savez(tmp_path / "low_source.npz", source=low)
    s1, s1b = tmp_path / "s1.npz", tmp_path / "s1b.npz"
    common = ["--nfe", "2", "--sampler", "euler"]
    assert main(["sample", str(sr8), "--source", str(tmp_path / "low.npz"), *common, "--out", str(s1)]) == 0
    assert main(["sample", str(sr8), "--source", str(tmp_path / "low_source.npz"), *common, "--out", str(s1b)]) == 0
    with np.load(s1) as a, np.load(s1b) as b:
        assert np.array_equal(a["images"], b["images"]) and {"images", "source"} <= set(a.files)
        stage1 = a["images"]
    capsys.readouterr()
    s2 = tmp_path / "s2.npz"
    assert main(["sample", str(sr16), "--source", str(s1), *common, "--out", str(s2)]) == 0
    assert "has 'images' and 'source': using 'images'" in capsys.readouterr().out
    np.savez(tmp_path / "explicit.npz", source=stage1)
    assert main(["sample", str(sr16), "--source", str(tmp_path / "explicit.npz"), *common,
                 "--out", str(tmp_path / "e.npz"), "--quiet"]) == 0
    assert "note:" not in capsys.readouterr().out
    with np.load(s2) as a, np.load(tmp_path / "e.npz") as b:
        assert a["images"].shape == (3, 16, 16, 1) and np.array_equal(a["images"], b["images"])
    np.savez(tmp_path / "odd.npz", images=np.zeros((2, 5, 5, 1), np.uint8))
    assert main(["sample", str(sr16), "--source", str(tmp_path / "odd.npz"), "--out", str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys, "'images' are (1, 5, 5) (C, H, W); this model takes 8x8 low-resolution inputs or 16x16")


@pytest.mark.slow  # trains (the module's tiny SR runs)
def test_restoration_grid_has_labelled_input_output_truth_rows(sr_runs, tmp_path):
    sr8, _ = sr_runs
    clean = np.tile(np.linspace(0, 255, 8, dtype=np.uint8), (6, 8, 1))[..., None]
    np.savez(tmp_path / "clean.npz", images=clean)
    png = tmp_path / "r.png"
    assert main(["sample", str(sr8), "--source", str(tmp_path / "clean.npz"), "--nfe", "2", "--sampler", "euler",
                 "--out", str(png), "--quiet"]) == 0
    with Image.open(png) as im:
        w, h = im.size
        assert h > w / 2  # 6 images of 3 rows: wrapped into bands, not 3 strips of 6
        assert _dark_fraction(im, (0, 0, 30, h)) > 0.01  # the row labels
