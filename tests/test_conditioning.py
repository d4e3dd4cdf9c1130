"""Training recipes by condition (denoisekit.conditioning): class, text and image conditions through the
Trainer, their dropout, the config checks and the ``denoisekit sample`` options that go with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denoisekit.cli import main
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.conditioning import ClassCondition, TextCondition, collate
from denoisekit.train.trainer import Trainer, train_from_config
from denoisekit.train.run import load_run

UNET = {"name": "unet", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
        "head_channels": 16, "norm_groups": 8}
TEXT = {
    "data": {"name": "shapes", "size": 16, "length": 64, "max_shapes": 2, "return_masks": False},
    "model": {**UNET, "in_channels": 3, "context_dim": 32},
    "condition": {"kind": "text", "dropout": 0.25, "encoder": "tokens", "dim": 32, "layers": 1, "heads": 2},
    "train": {"steps": 3, "batch_size": 8, "save_every": 0},
    "sample": {"n": 4, "nfe": 2, "sampler": "euler"},
}
IMAGE = {
    "data": {"name": "digits", "size": 8},
    "model": {**UNET, "in_channels": 1, "concat_channels": 2},
    "condition": {"kind": "image", "task": "super_resolution", "factor": 2},
    "train": {"steps": 2, "batch_size": 8, "save_every": 0},
    "sample": {"n": 4, "nfe": 2, "sampler": "euler"},
}


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_dropout_is_per_sample_and_independent_of_the_batch():
    cond = TextCondition(TextCondition.Config(encoder="tokens"), dropout=0.5)
    batch = {"caption": [f"caption {i}" for i in range(16)]}
    whole = cond.training(batch, gens(16), "cpu")["text"]
    halves = (cond.training({"caption": batch["caption"][:8]}, gens(8), "cpu")["text"]
              + cond.training({"caption": batch["caption"][8:]}, gens(8, 8), "cpu")["text"])
    assert whole == halves and 0 < whole.count("") < 16
    assert all(t in ("", c) for t, c in zip(whole, batch["caption"]))
    labels = ClassCondition(dropout=0.5, num_classes=10).training({"label": torch.arange(8)}, gens(8), "cpu")
    assert set(labels.tolist()) - set(range(8)) == {10}  # dropped labels become the null label
    with pytest.raises(ValueError, match="dataset label 12 outside 0..9"):
        ClassCondition(num_classes=10).training({"label": torch.tensor([12])}, gens(1), "cpu")


def test_collate_batches_what_the_condition_needs():
    items = [{"image": torch.zeros(1, 2, 2), "label": 3, "caption": "a", "masks": torch.zeros(i + 1)} for i in range(2)]
    out = collate(items, ("label", "caption"))
    assert out["label"].tolist() == [3, 3] and out["caption"] == ["a", "a"] and "masks" not in out
    with pytest.raises(ValueError, match="needs a 'caption' in every dataset item"):
        collate([{"image": torch.zeros(1)}], ("caption",))


@pytest.mark.parametrize("override, message", [
    ("model.context_dim=16", "model.context_dim must be 32"),
    ("condition.encoder=bert", "condition.encoder: unknown value 'bert'; allowed: minilm, tokens"),
    ("condition.task=paint", None),
])
def test_text_config_errors(override, message):
    if message is None:
        with pytest.raises(ValueError, match="unknown key 'condition.task'"):
            config_from_dict(apply_overrides(TEXT, [override]))
        return
    with pytest.raises(ValueError, match=message):
        config_from_dict(apply_overrides(TEXT, [override]))


@pytest.mark.slow  # trains
def test_text_model_trains_samples_and_resumes_exactly(tmp_path):
    cfg = config_from_dict(TEXT)
    run = train_from_config(cfg, tmp_path / "run", progress=False)
    assert (run / "samples.png").is_file()
    den, _ = load_run(run)
    assert "text_encoder.token_embedding.weight" in den.net.state_dict() or any(
        k.startswith("text_encoder.") for k in den.net.state_dict())
    x = torch.zeros(2, 3, 16, 16)
    a = den(x, torch.ones(2), {"text": ["a red circle", "a blue square"]})
    b = den(x, torch.ones(2), {"text": ["a blue square", "a blue square"]})
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # the prompt reaches the network
    # Half, resume, half == straight (captions, dropout and the learned encoder included).
    half = Trainer(cfg, tmp_path / "resumed", progress=False)
    half.fit(stop_at=1)
    Trainer(cfg, tmp_path / "resumed", resume=True, progress=False).fit()
    straight, resumed = load_run(run, weights="model")[0].net, load_run(tmp_path / "resumed", weights="model")[0].net
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.slow  # trains
def test_sample_cli_prompts_and_their_errors(tmp_path, capsys):
    run = train_from_config(config_from_dict(TEXT), tmp_path / "run", progress=False)
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--prompt", "a red circle", "--prompt", "a small blue star in the centre",
                 "--n", "4", "--nfe", "2", "--sampler", "euler", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (4, 16, 16, 3)
        assert f["prompts"].tolist() == ["a red circle"] * 2 + ["a small blue star in the centre"] * 2
    assert main(["sample", str(run), "--label", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "this model is text-conditional (use --prompt)" in capsys.readouterr().err


@pytest.mark.slow  # trains
def test_image_conditioned_model_trains_and_checks_its_channels(tmp_path):
    run = train_from_config(config_from_dict(IMAGE), tmp_path / "run", progress=False)
    assert (run / "samples.png").is_file()
    den, cfg = load_run(run)
    with pytest.raises(ValueError, match="concat"):
        den(torch.zeros(1, 1, 8, 8), torch.ones(1))  # the model needs its condition image
    bad = config_from_dict(apply_overrides(IMAGE, ["model.concat_channels=1"]))
    with pytest.raises(ValueError, match="model.concat_channels must be 2 for condition task 'super_resolution'"):
        Trainer(bad, tmp_path / "bad", progress=False)


@pytest.mark.slow  # trains
def test_prompt_on_a_class_model_is_a_clear_error(tmp_path, capsys):
    cfg = config_from_dict({"data": {"name": "digits", "size": 8}, "model": {**UNET, "in_channels": 1, "num_classes": 10},
                            "condition": {"kind": "class"}, "train": {"steps": 1, "batch_size": 4, "save_every": 0},
                            "sample": {"n": 0}})
    run = train_from_config(cfg, tmp_path / "run", progress=False)
    assert main(["sample", str(run), "--prompt", "a seven", "--out", str(tmp_path / "x.png")]) == 2
    assert "--prompt given, but this model is not text-conditional (condition.kind: class)" in capsys.readouterr().err


@pytest.mark.slow  # trains
def test_sample_cli_restores_from_a_source(tmp_path, capsys):
    run = train_from_config(config_from_dict(IMAGE), tmp_path / "run", progress=False)
    clean = (np.arange(3 * 64, dtype=np.uint8).reshape(3, 8, 8, 1) * 3)
    np.savez(tmp_path / "clean.npz", images=clean)
    out = tmp_path / "r.npz"
    assert main(["sample", str(run), "--source", str(tmp_path / "clean.npz"), "--nfe", "2", "--sampler", "euler",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (3, 8, 8, 1) and f["truth"].shape == (3, 8, 8, 1)
        assert f["consistency"].shape == (3,)
    assert "super_resolution results" in capsys.readouterr().out
    np.savez(tmp_path / "bad.npz", source=np.zeros((2, 8, 8, 1), np.uint8))  # full size, not 4x4
    assert main(["sample", str(run), "--source", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "x.png")]) == 2
    assert "expects a (B, 1, 4, 4) low-resolution input, got (2, 1, 8, 8)" in capsys.readouterr().err
    assert main(["sample", str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert "this model is image-conditioned: give --source" in capsys.readouterr().err


@pytest.mark.slow  # trains
def test_sample_cli_classifier_guidance(tmp_path, capsys):
    from denoisekit.train.classifier import load_classifier_config, save_classifier, train_noise_classifier

    cfg = config_from_dict({"data": {"name": "digits", "size": 8}, "model": {**UNET, "in_channels": 1},
                            "process": {"name": "edm", "prediction": "edm"},
                            "train": {"steps": 1, "batch_size": 4, "save_every": 0}, "sample": {"n": 0}})
    run = train_from_config(cfg, tmp_path / "run", progress=False)
    ccfg = load_classifier_config("configs/classifier/digits.yaml", ["train.steps=2", "train.batch_size=8"])
    clf, acc = train_noise_classifier(ccfg)
    save_classifier(tmp_path / "clf", clf, ccfg, acc)
    out = tmp_path / "g.npz"
    assert main(["sample", str(run), "--classifier", str(tmp_path / "clf"), "--classifier-scale", "2",
                 "--label", "3", "--n", "2", "--nfe", "2", "--sampler", "euler", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["labels"].tolist() == [3, 3]
    assert main(["sample", str(run), "--classifier-scale", "2", "--out", str(out)]) == 2
    assert "--classifier-scale needs --classifier" in capsys.readouterr().err
    assert main(["sample", str(run), "--classifier", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
