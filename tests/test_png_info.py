"""Generation parameters in PNG info (A1111's ``parameters`` chunk): the text round-trips, and the PNGs that
``denoisekit sample`` writes (a grid, a directory of images) carry them."""

from pathlib import Path

import pytest
from PIL import Image

from denoisekit.cli import main
from denoisekit.pipelines.png_info import format_parameters, parse_parameters, read_png_info, save_png_with_info

from test_cli_image import CONFIG, TINY


def test_format_parse_round_trip():
    fields = {"Steps": 9, "NFE": 10, "Sampler": "dpmpp_2m", "Schedule": "karras", "CFG scale": 2.5, "Seed": 7,
              "Size": "32x32", "Model hash": "0123456789", "Model": "a, b: \"c\""}
    text = format_parameters("a red circle\non two lines", "blurry", fields)
    assert text.splitlines()[:3] == ["a red circle", "on two lines", "Negative prompt: blurry"]
    assert text.splitlines()[3] == ('Steps: 9, NFE: 10, Sampler: dpmpp_2m, Schedule: karras, CFG scale: 2.5, Seed: 7, '
                                    'Size: 32x32, Model hash: 0123456789, Model: "a, b: \\"c\\""')
    parsed = parse_parameters(text)
    assert parsed == {"Prompt": "a red circle\non two lines", "Negative prompt": "blurry",
                      **{k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in fields.items()}}
    assert parse_parameters(format_parameters("", None, {"Seed": 3})) == {"Prompt": "", "Seed": "3"}
    with pytest.raises(ValueError, match="no generation parameters"):
        parse_parameters("just a caption")


def test_png_chunk_round_trip(tmp_path):
    text = format_parameters("p", None, {"Steps": 4, "Seed": 1})
    path = save_png_with_info(Image.new("RGB", (4, 4)), tmp_path / "a.png", text)
    assert read_png_info(path) == text
    assert Image.open(path).text["parameters"] == text  # a plain tEXt chunk other tools read
    Image.new("L", (2, 2)).save(tmp_path / "plain.png")
    assert read_png_info(tmp_path / "plain.png") is None
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        read_png_info(tmp_path / "bad.png")


@pytest.mark.slow  # trains a tiny run
def test_sample_cli_writes_parameters(tmp_path):
    run = tmp_path / "digits"
    assert main(["train", CONFIG, "--out", str(run), "--quiet", *TINY]) == 0
    grid, each = tmp_path / "grid.png", f"{tmp_path}/each/"
    common = ["--sampler", "euler", "--nfe", "3", "--seed", "11", "--label", "4", "--cfg", "2", "--quiet"]
    assert main(["sample", str(run), "--out", str(grid), "--n", "2", *common]) == 0
    p = parse_parameters(read_png_info(grid))
    assert {k: p[k] for k in ("Prompt", "Steps", "NFE", "Sampler", "Seed", "CFG scale", "Class", "Size", "Model")} == {
        "Prompt": "", "Steps": "3", "NFE": "3", "Sampler": "euler", "Seed": "11", "CFG scale": "2", "Class": "4",
        "Size": "8x8", "Model": "digits"}
    assert len(p["Model hash"]) == 10
    assert main(["sample", str(run), "--out", str(each), "--n", "2", *common]) == 0
    seeds = [parse_parameters(read_png_info(Path(each) / f"0000{i}.png"))["Seed"] for i in range(2)]
    assert seeds == ["11", "12"]  # image i has seed + i


@pytest.mark.slow  # trains a tiny super-resolution run
def test_sample_source_writes_parameters(tmp_path_factory, tmp_path):
    import numpy as np

    from test_cli_ux import SR, _train

    run = _train(tmp_path_factory, "sr8", SR % 8)
    np.savez(tmp_path / "clean.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    for out in (tmp_path / "r.png", f"{tmp_path}/each/"):
        assert main(["sample", str(run), "--source", str(tmp_path / "clean.npz"), "--nfe", "2", "--sampler", "euler",
                     "--seed", "5", "--out", str(out), "--quiet"]) == 0
    p = parse_parameters(read_png_info(tmp_path / "r.png"))
    assert (p["Sampler"], p["NFE"], p["Seed"], p["Size"], p["Model"]) == ("euler", "2", "5", "8x8", "run")
    assert "CFG scale" not in p  # no classifier-free guidance for an image-conditioned run
    assert parse_parameters(read_png_info(tmp_path / "each" / "00001.png"))["Seed"] == "6"
