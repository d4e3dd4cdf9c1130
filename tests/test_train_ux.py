"""What ``denoisekit train`` tells a newcomer training on their own folder (issue 18, items 2, 7 and 8): a
CPU-sized template, the image size taken from the data, the labels and captions found, a start-up summary
with a measured time estimate, the warm-up-longer-than-the-run warning, and progress for long sampling."""

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from denoisekit.cli import main
from denoisekit.train.config import load_config, warmup_warning

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "configs" / "folder-template.yaml"

# A 3-channel U-Net small enough to train a few steps on 12x12 images in a second or two.
TINY = """\
data: {{name: folder, root: {root}{size}}}
model: {{name: unet, in_channels: 3, channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_levels: [],
        mid_attention: false, head_channels: 8, norm_groups: 4}}
process: {{name: edm, prediction: edm}}
optim: {{warmup_steps: {warmup}}}
train: {{steps: {steps}, batch_size: 4, save_every: 0}}
sample: {{n: 0, every: 0, nfe: 2}}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight 12x12 images in two class folders, with captions in metadata.jsonl."""
    root = tmp_path_factory.mktemp("mine")
    rng = np.random.default_rng(0)
    rows = []
    for cls, colour in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
        (root / cls).mkdir()
        for i in range(4):
            a = (rng.integers(0, 60, (12, 12, 3)) + np.array(colour) * 0.7).astype(np.uint8)
            Image.fromarray(a).save(root / cls / f"{i}.png")
            rows.append({"file_name": f"{cls}/{i}.png", "text": f"a {cls} square"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _train(tmp_path, folder, *args, size="", steps=5, warmup=0):
    """Run ``denoisekit train`` on the tiny config; return (exit code, stdout, stderr, warnings, run dir)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=folder, size=size, steps=steps, warmup=warmup))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["train", str(cfg), "--out", str(tmp_path / "run"), *args])
    return code, out.getvalue(), err.getvalue(), [str(w.message) for w in caught], tmp_path / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, folder):
    return _train(tmp_path_factory.mktemp("run"), folder)


# ------------------------------------------------------------------------------------------ (a) template

def test_template_is_cpu_sized_and_says_what_a_gpu_run_changes(folder):
    cfg = load_config(TEMPLATE, [f"data.root={folder}"])
    assert cfg.train.steps <= 5000 and cfg.train.batch_size <= 64 and cfg.train.mixed_precision == "no"
    assert cfg.model.options["channels"] <= 64
    assert cfg.optim.warmup_steps < cfg.train.steps
    assert "size" not in cfg.data.options  # taken from the data
    text = TEMPLATE.read_text()
    assert "GPU" in text and all(k in text for k in ("channels", "steps", "batch_size"))


def test_template_model_is_small(folder):
    from denoisekit.train.build import build_model

    net = build_model(load_config(TEMPLATE, [f"data.root={folder}"]))
    assert sum(p.numel() for p in net.parameters()) < 3_000_000


# ------------------------------------------------------------------------------------------ (b) image size

def test_size_comes_from_the_data_when_unset(trained):
    code, out, _, _, run = trained
    assert code == 0
    assert "data.size: 12 (not set: the folder's most common image size, 12x12, 8 of 8 images)" in out, out
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["size"] == 12


def test_a_set_size_that_differs_is_said(tmp_path, folder):
    code, out, *_ = _train(tmp_path, folder, size=", size: 16", steps=1)
    assert code == 0
    assert "12x12 images are resized to 16x16 (data.size)" in out, out


# ------------------------------------------------------------------------------------------ (c) labels, captions

def test_labels_and_captions_found_are_reported_with_how_to_use_them(trained):
    out = trained[1]
    assert "classes: 2 class sub-folders (blue, red), not used (condition.kind: none); to use them: " \
           "--set condition.kind=class --set model.num_classes=2" in out, out
    assert "captions: 8 in metadata.jsonl, not used (condition.kind: none); to use them: " \
           "--set condition.kind=text" in out, out


def test_labels_in_use_are_reported_as_used(tmp_path, folder):
    code, out, *_ = _train(tmp_path, folder, "--set", "condition.kind=class", "--set", "model.num_classes=2",
                           steps=1)
    assert code == 0
    assert "classes: 2 class sub-folders (blue, red), used (condition.kind: class)" in out, out


# ------------------------------------------------------------------------------------------ (d) summary

def test_startup_summary_comes_before_training_and_has_a_measured_estimate(trained):
    out, err = trained[1], trained[2]
    head = out.split("speed:")[0]
    for needle in ("data: 8 images", "12x12, 3 channels", "parameters", "training: 5 steps of batch 4"):
        assert needle in head, out
    # the estimate is measured on warm steps (after the first), then printed with the time left
    line = next(line for line in out.splitlines() if line.startswith("speed:"))
    assert "s/step over steps 2-4" in line and "remaining 1 step" in line, line
    assert out.index("data:") < out.index("speed:") < out.index("trained in")
    assert "Traceback" not in err


def test_quiet_prints_no_summary(tmp_path, folder):
    code, out, err, _, _ = _train(tmp_path, folder, "--quiet", steps=5)
    assert code == 0
    assert out.count("\n") == 1 and out.startswith("trained in"), out
    assert err == "", err


def test_too_short_a_run_gets_no_estimate(tmp_path, folder):
    code, out, *_ = _train(tmp_path, folder, steps=1)
    assert code == 0 and "data: 8 images" in out and "speed:" not in out


# ------------------------------------------------------------------------------------------ (e) warm-up

def test_warmup_longer_than_the_run_is_warned(tmp_path, folder):
    code, _, _, caught, _ = _train(tmp_path, folder, steps=2, warmup=10)
    assert code == 0
    assert any("optim.warmup_steps (10) >= train.steps (2)" in w for w in caught), caught


def test_warmup_warning_names_both_keys_for_digits_dit_at_150_steps():
    cfg = load_config(ROOT / "configs" / "digits-dit.yaml", ["train.steps=150"])
    msg = warmup_warning(cfg.optim.warmup_steps, cfg.train.steps)
    assert msg is not None and "optim.warmup_steps (200) >= train.steps (150)" in msg
    assert "75%" in msg  # where the learning rate ends: 150 / 200 of optim.lr
    assert warmup_warning(cfg.optim.warmup_steps, 3000) is None
    assert "only at the last step" in warmup_warning(150, 150)


def test_a_warm_run_is_not_warned(trained):
    assert not any("warmup_steps" in w for w in trained[3]), trained[3]


# ------------------------------------------------------------------------------------------ progress

def test_generate_shows_a_bar_over_several_batches_only(trained, capsys):
    from denoisekit.generation import generate
    from denoisekit.train.run import load_model

    model = load_model(trained[4])
    generate(model, 3, nfe=1, batch_size=2, progress=True)
    assert "3/3" in capsys.readouterr().err
    generate(model, 2, nfe=1, batch_size=2, progress=True)
    generate(model, 3, nfe=1, batch_size=2)
    assert capsys.readouterr().err == ""


def test_autoencoder_evaluation_says_what_it_is_doing(capsys):
    import torch

    from denoisekit.models.autoencoder import Autoencoder, AutoencoderConfig
    from denoisekit.train.autoencoder_eval import evaluate_autoencoder

    ae = Autoencoder(AutoencoderConfig(in_channels=1, channels=8, factor=2, norm_groups=4, latent_channels=2))
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    evaluate_autoencoder(ae, images)
    assert capsys.readouterr().out == ""
    evaluate_autoencoder(ae, images, progress=True)
    assert "held-out evaluation: reconstructing 4 images" in capsys.readouterr().out


def test_train_classifier_says_what_it_is_doing_and_warns_of_a_long_warmup(tmp_path, capsys):
    overrides = ["train.steps=2", "train.batch_size=8", "model.channels=8", "model.head_channels=8",
                 "model.norm_groups=4", "optim.warmup_steps=50"]
    with pytest.warns(UserWarning, match=r"optim.warmup_steps \(50\) >= train.steps \(2\)"):
        code = main(["train-classifier", str(ROOT / "configs" / "classifier" / "digits.yaml"), "--out",
                     str(tmp_path / "clf"), *[a for o in overrides for a in ("--set", o)]])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("classifier: 10 classes of digits, 2 steps of batch 8"), out
    assert "held-out accuracy at 7 noise levels on" in out, out
