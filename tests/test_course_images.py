"""The course's image parts offline (issue 11, item 2): the three-class ``shapes3`` data, its FID feature network
with a class head that ``evaluate`` reads, the presets of configs/course/, and ``sample --png-folder``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from denoisekit.cli import main
from denoisekit.data import IMAGE_DATASETS
from denoisekit.data.shapes import region_index
from denoisekit.data.shapes3 import SHAPES3_KINDS, Shapes3Dataset
from denoisekit.eval import evaluate
from denoisekit.eval import shapes3 as s3
from denoisekit.eval.features import ClassifierConfig
from denoisekit.train.config import load_config

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs" / "course").glob("*.yaml"))
TINY = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "model.channels=8",
        "--set", "model.channel_mult=[1,2]", "--set", "model.num_res_blocks=1", "--set", "model.attention_levels=[]",
        "--set", "model.head_channels=8", "--set", "model.norm_groups=4", "--set", "train.save_every=0",
        "--set", "sample.n=0", "--set", "data.size=16", "--set", "optim.warmup_steps=0"]


def test_shapes3_is_one_shape_of_three_kinds_labelled_by_kind():
    ds = IMAGE_DATASETS["shapes3"](length=60, seed=3)
    assert isinstance(ds, Shapes3Dataset) and ds.classes == SHAPES3_KINDS and len(ds) == 60
    labels = []
    for i in range(60):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and int(item["count"]) == 1 and "masks" not in item
        assert int(item["label"]) == int(item["kinds"][0])
        labels.append(int(item["label"]))
    assert set(labels) == {0, 1, 2}
    # the shapes options still apply
    light = Shapes3Dataset(length=2, background="light", size=16)[0]["image"]
    assert light.shape == (3, 16, 16) and light[:, 0, 0].min() > 0.5  # a light background, not black


def test_shapes3_labels_name_what_is_drawn():
    x, y = s3.shapes3_labelled(40, seed=11)
    ds = Shapes3Dataset(length=40, seed=11)
    assert x.shape == (40, 3, 32, 32) and y.shape == (40, len(s3.SHAPES3_HEADS))
    for i in (0, 17, 39):
        item = ds[i]
        assert torch.equal(x[i], item["image"])
        cx, cy = item["positions"][0].tolist()
        assert y[i].tolist() == [int(item["kinds"][0]), int(item["colours"][0]), int(item["sizes"][0]),
                                 region_index(cx, cy)]
    ref, labels = s3.shapes3_reference(10)
    assert ref.shape == (10, 3, 32, 32) and torch.equal(labels, s3.shapes3_labelled(10, s3.SHAPES3_EVAL_SEED)[1][:, 0])


@pytest.fixture(scope="module")
def small_network(tmp_path_factory):
    """The shapes3 network's recipe at a test's budget (1500 renders, 6 epochs, narrow: ~12 s of CPU), cached in a
    temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setattr(s3, "SHAPES3_TRAIN_IMAGES", 1500)
    mp.setattr(s3, "SHAPES3_CONFIG", ClassifierConfig(image_size=32, width=8, feature_dim=32, dropout=0.0, epochs=6,
                                                      batch_size=32, shift=0, test_fraction=0.1))
    cache = tmp_path_factory.mktemp("cache")
    yield s3.shapes3_feature_network(cache_dir=cache), cache, mp
    mp.undo()


@pytest.mark.slow  # trains a small feature network
def test_feature_network_reads_the_class_and_grades_a_collapse(small_network):
    net, cache, _ = small_network
    assert net.label_head == 0 and net.num_classes == [n for _, n in s3.SHAPES3_HEADS]
    assert net.info["test_accuracy_per_head"][0] > 0.9  # the kind
    assert s3.shapes3_feature_network(cache_dir=cache).info["cache_status"] == "loaded"
    ref, _ = s3.shapes3_reference(200)
    real, real_labels = s3.shapes3_reference(100, seed=5)
    circles = torch.stack([Shapes3Dataset(length=100, seed=5, kinds=("circle",))[i]["image"] for i in range(100)])
    good = evaluate(real, ref, labels=real_labels, features=net)
    bad = evaluate(circles, ref, labels=torch.zeros(100, dtype=torch.long), features=net)
    assert len(good["class_counts"]) == 3 and good["classifier_accuracy"] > 0.9
    assert good["class_coverage"] == 1.0 and bad["class_coverage"] == pytest.approx(1 / 3)
    assert bad["fid"] > 3 * good["fid"] and bad["fid"] > 3 * good["floor"]["fid"]


@pytest.mark.slow  # trains a small feature network (shared with the test above)
def test_eval_picks_the_shapes3_network_for_its_data(small_network, tmp_path, monkeypatch):
    _, cache, _ = small_network
    monkeypatch.setenv("DENOISEKIT_CACHE", str(cache))
    x, y = s3.shapes3_reference(60, seed=9)
    npz = tmp_path / "s.npz"
    np.savez(npz, images=((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy(),
             labels=y.numpy())
    m = evaluate(npz, "shapes3", ref_limit=200)
    assert m["feature_network"].startswith("shapes3 classifier") and "classifier_accuracy" in m


def test_a_multi_head_network_without_a_label_head_gets_no_class_metrics():
    from denoisekit.eval.features import FeatureClassifier
    from denoisekit.eval.report import class_metrics

    net = FeatureClassifier(3, [3, 2], ClassifierConfig(image_size=8, width=4, feature_dim=8))
    assert net.label_head is None and FeatureClassifier(3, 3).label_head == 0
    with pytest.raises(ValueError, match="label_head"):
        class_metrics(net, torch.zeros(2, 3, 8, 8))
    net.label_head = 1
    assert len(class_metrics(net, torch.zeros(4, 3, 8, 8))["class_counts"]) == 2


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_course_presets_load(path):
    cfg = load_config(path)
    assert cfg.data.name == "shapes3"
    assert (cfg.model.options.get("num_classes") == 3) == (cfg.condition.kind == "class")


@pytest.mark.parametrize("name, process, prediction, sampler", [
    ("ddpm", "ddpm", "eps", "ddpm"), ("ddim-cfg", "ddpm", "eps", "ddim"), ("flow-cfg", "flow", "flow", "flow_euler")])
def test_assignment_presets_keep_what_the_assignment_fixes(name, process, prediction, sampler):
    cfg = load_config(PRESETS[0].with_name(f"{name}.yaml"))
    assert (cfg.process.name, cfg.process.prediction, cfg.sample.sampler) == (process, prediction, sampler)
    assert cfg.loss.noise_levels == "uniform" and cfg.loss.weighting == "simple" and cfg.model.options["in_channels"] == 3
    if process == "ddpm":  # the assignments' scheduler: 1000 linear betas 1e-4 .. 0.02 (the process's defaults)
        assert cfg.process.options == {}
    else:
        assert cfg.process.options == {"sigma_min": 0.001}
    if cfg.condition.kind == "class":  # the assignments' CFG: labels dropped 10%, w = 7.5 is --cfg 8.5
        assert cfg.condition.dropout == 0.1 and cfg.sample.cfg_scale == 8.5
    assert (name == "ddpm") == (cfg.condition.kind == "none") and cfg.sample.nfe == (1000 if name == "ddpm" else 50)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ddim-cfg"
    assert main(["train", str(PRESETS[0].with_name("ddim-cfg.yaml")), "--out", str(out), "--quiet", *TINY]) == 0
    return out


@pytest.mark.slow  # trains (2 steps of a tiny network)
def test_png_folder_writes_one_png_per_image(tiny_run, tmp_path, capsys):
    folder = tmp_path / "pngs"
    assert main(["sample", str(tiny_run), "--n", "5", "--nfe", "2", "--png-folder", str(folder)]) == 0
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    with Image.open(files[0]) as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    # with --out, both: the same images as the .npz
    npz = tmp_path / "s.npz"
    assert main(["sample", str(tiny_run), "--n", "5", "--nfe", "2", "--out", str(npz), "--png-folder",
                 str(tmp_path / "both")]) == 0
    arrays = np.load(npz)["images"]
    assert all(np.array_equal(np.asarray(Image.open(tmp_path / "both" / f"{i:05d}.png")), arrays[i]) for i in range(5))
    assert "and " + str(tmp_path / "both") in capsys.readouterr().out


@pytest.mark.slow  # trains (the tiny run above)
@pytest.mark.parametrize("args, message", [
    ([], "give --out"),
    (["--png-folder", "{file}"], "is not a directory"),
])
def test_png_folder_bad_input(tiny_run, tmp_path, capsys, args, message):
    file = tmp_path / "f.txt"
    file.write_text("x")
    assert main(["sample", str(tiny_run), "--n", "2", *[a.format(file=file) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
