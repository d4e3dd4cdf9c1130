"""`make demo`'s preset: configs/digits-demo.yaml loads, trains and goes through sample -> eval -> report.

The run is shrunk with ``--set`` (2 steps, batch 8) but keeps the preset's model, process, loss and sampler,
so a broken key, a model that does not fit the data's size or a sampler/NFE the CLI rejects fails here
rather than minutes into ``make demo``. The digits feature network is swapped for a one-epoch one: this
test checks the wiring, not the metrics.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoisekit.cli import main
from denoisekit.train.config import load_config
from denoisekit.eval import features
from denoisekit.eval import report as eval_report
from denoisekit.eval.features import ClassifierConfig
from denoisekit.samplers.run import steps_for_nfe

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits-demo.yaml"
SHRINK = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "train.log_every=1",
          "--set", "sample.n=10", "--set", "sample.nfe=4"]
TINY_FEATURES = ClassifierConfig(image_size=8, width=4, feature_dim=8, epochs=1, batch_size=64)


def test_makefile_demo_uses_this_config():
    demo = re.search(r"^demo:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S)
    assert demo is not None and "configs/digits-demo.yaml" in demo.group(0)


def test_demo_config_is_class_conditional_with_guidance():
    c = load_config(CONFIG)
    assert c.condition.kind == "class" and c.num_classes == 10
    assert 0 < c.condition.dropout < 1 and c.sample.cfg_scale > 1  # classifier-free guidance
    assert c.data.name == "digits"
    assert steps_for_nfe(c.sample.sampler, c.sample.nfe) >= 1  # the grid's sampler can run at the preset's NFE


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["train", str(CONFIG), "--out", str(out), "--quiet", "--threads", "1", *SHRINK]) == 0
    return out


@pytest.mark.slow  # trains (the module's CLI train run)
def test_demo_trains_with_overrides(run):
    c = load_config(run / "config.yaml")
    assert (c.train.steps, c.train.batch_size) == (2, 8)
    assert c.model.options == load_config(CONFIG).model.options  # the preset's network, not a stand-in
    for name in ("config.yaml", "log.csv", "loss.png", "samples.png"):
        assert (run / name).is_file(), name
    assert len(list((run / "checkpoints").iterdir())) == 1


@pytest.mark.slow  # trains (the module's CLI train run)
def test_demo_sample_eval_report(run, tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setitem(eval_report.BUILTIN_NETWORKS, "digits",  # what `denoisekit eval --ref digits` reads
                        lambda cache_dir=None: features.digits_feature_network(cache_dir=cache, config=TINY_FEATURES))
    png, npz = run / "samples.png", run / "samples.npz"
    # the Makefile's commands, with fewer images and model evaluations
    assert main(["sample", str(run), "--label", "all", "--n", "20", "--nfe", "4", "--out", str(png)]) == 0
    assert main(["sample", str(run), "--label", "all", "--n", "30", "--nfe", "4", "--out", str(npz)]) == 0
    w, h = Image.open(png).size
    assert h > 4 * w  # 10 rows (one per class) of 2 images
    data = np.load(npz)
    size = load_config(CONFIG).data.options.get("size", 8)
    assert data["images"].shape == (30, size, size, 1) and data["images"].dtype == np.uint8
    assert np.array_equal(data["labels"], np.tile(np.arange(10), 3))  # image i has label i mod 10
    assert main(["eval", str(npz), "--ref", "digits", "--json", str(run / "metrics.json")]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"fid", "kid", "precision", "recall", "classifier_accuracy"} <= metrics.keys()
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "samples.png" in report and "FID" in report
