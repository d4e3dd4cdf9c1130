"""A LoRA and a ControlNet on one base (generation/adapters.py, generation/control.py): the ControlNet is checked
against the base's weights hash from before any LoRA, the two together sample, and they compose as documented
(the LoRA on the base U-Net, then the ControlNet's residuals added to it): equal to the ControlNet on a base with
the LoRA merged into its weights. A ControlNet for another base is still refused in one line."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.slow
pytest.importorskip("peft")

NFE, LABEL = 4, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A toy base, a LoRA run and a ControlNet run on it (6 steps each), and an 8x8 edge image."""
    from PIL import Image
    from recipe_cases import lora as lora_case
    from recipe_cases.diffusion import CONFIG

    from denoisekit.engine import Engine
    from denoisekit.train.config import apply_overrides, config_from_dict
    from denoisekit.train.recipes import ControlNetRecipe

    tmp = tmp_path_factory.mktemp("combined")
    Engine(lora_case.make(tmp), tmp / "lora", progress=False).fit()
    base = lora_case.base_run(tmp)
    cfg = apply_overrides(CONFIG, lora_case.BASE + [f"init.from_run={base}", "train.recipe=controlnet",
                                                    "controlnet.hidden=[4,8]", "optim.lr=1e-2"])
    Engine(ControlNetRecipe(config_from_dict(cfg)), tmp / "controlnet", progress=False).fit()
    edges = np.zeros((8, 8), np.uint8)
    edges[2:6, 2] = edges[2:6, 5] = edges[2, 2:6] = edges[5, 2:6] = 255
    Image.fromarray(edges).save(tmp / "edges.png")
    hint = torch.as_tensor(edges / 255.0, dtype=torch.float32)[None, None]
    return {"dir": tmp, "base": base, "lora": tmp / "lora", "controlnet": tmp / "controlnet", "hint": hint}


def _sample(model, n=3):
    from denoisekit.generation import generate

    return generate(model, n, torch.full((n,), LABEL), nfe=NFE, seed=0)


def _both(runs, lora_weight=1.0, control_scale=1.0):
    from denoisekit.generation.adapters import with_loras
    from denoisekit.generation.control import with_controlnets
    from denoisekit.train.run import load_model

    model = with_loras(load_model(runs["base"]), [(runs["lora"], lora_weight)])
    return with_controlnets(model, [(runs["controlnet"], control_scale)], control=runs["hint"])


def test_lora_then_controlnet_samples_and_each_acts(runs):
    from denoisekit.generation.adapters import with_loras
    from denoisekit.generation.control import with_controlnets
    from denoisekit.train.run import load_model

    base = load_model(runs["base"])
    plain = _sample(base)
    lora_only = _sample(with_loras(load_model(runs["base"]), [(runs["lora"], 1.0)]))
    control_only = _sample(with_controlnets(base, [(runs["controlnet"], 1.0)], control=runs["hint"]))
    both = _sample(_both(runs))
    assert torch.isfinite(both).all() and both.shape == plain.shape
    for other in (plain, lora_only, control_only):  # both adapters change the sample
        assert (both - other).abs().max() > 1e-4
    assert torch.equal(_sample(_both(runs, control_scale=0.0)), lora_only)  # scale 0: the LoRA'd base exactly
    assert torch.equal(_sample(_both(runs, lora_weight=0.0)), control_only)  # weight 0: the ControlNet alone


def test_combined_equals_the_controlnet_on_the_merged_base(runs):
    """The documented order: the LoRA changes the base U-Net's weights (here merged into them, a network
    without peft), and the ControlNet, a copy of the *original* encoder, adds its residuals to that U-Net."""
    from dataclasses import replace

    from denoisekit.generation.adapters import network, with_loras
    from denoisekit.models import lora
    from denoisekit.models.controlnet import controlled_denoiser, find_unet, load_control
    from denoisekit.train.run import load_model

    adapted = with_loras(load_model(runs["base"]), [(runs["lora"], 1.0)])
    net = network(adapted)
    lora.merge(net)
    merged = {k: v.clone() for k, v in net.state_dict().items() if "lora_" not in k}
    lora.unmerge(net)
    merged = {k.replace(".base_layer.", "."): v for k, v in merged.items()}
    plain = load_model(runs["base"])
    network(plain).load_state_dict(merged)  # the base network with W + s B A in place of W
    module = load_control(runs["controlnet"] / "controlnet.safetensors", find_unet(network(plain)))
    oracle = replace(plain, denoiser=controlled_denoiser(plain.denoiser, [module], [1.0], control=runs["hint"]))
    assert torch.allclose(_sample(_both(runs)), _sample(oracle), atol=1e-5)


def test_cli_lora_and_controlnet_together(runs, capsys):
    from denoisekit.cli import main

    out = runs["dir"] / "both.npz"
    args = ["sample", str(runs["base"]), "--n", "3", "--nfe", str(NFE), "--label", str(LABEL), "--quiet",
            "--lora", str(runs["lora"]), "--controlnet", str(runs["controlnet"]),
            "--control", str(runs["dir"] / "edges.png")]
    assert main([*args, "--out", str(out)]) == 0
    want = ((_sample(_both(runs)).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(np.load(out)["images"].astype(int) - want.astype(int)).max() <= 1


def test_controlnet_for_another_base_is_still_refused(runs, capsys):
    from denoisekit.cli import main
    from denoisekit.generation.adapters import with_loras
    from denoisekit.generation.control import with_controlnets
    from denoisekit.io import save_tensors
    from denoisekit.models.controlnet import read_control
    from denoisekit.train.run import load_model

    t, meta = read_control(runs["controlnet"] / "controlnet.safetensors")
    other = runs["dir"] / "other.safetensors"
    save_tensors(other, t, {**meta, "base_sha256": "0" * 64})
    model = with_loras(load_model(runs["base"]), [(runs["lora"], 1.0)])
    with pytest.raises(ValueError, match=r"other.safetensors' was trained on another base \(sha256 000000000000"):
        with_controlnets(model, [(other, 1.0)], control=runs["hint"])
    capsys.readouterr()
    assert main(["sample", str(runs["base"]), "--n", "1", "--out", str(runs["dir"] / "x.npz"), "--lora",
                 str(runs["lora"]), "--controlnet", str(other), "--control", str(runs["dir"] / "edges.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "other.safetensors' was trained on another base" in err and len(err.splitlines()) == 1
    assert not (runs["dir"] / "x.npz").exists()


def test_lora_after_a_controlnet_is_refused_in_one_line(runs):
    from denoisekit.generation.adapters import with_loras
    from denoisekit.generation.control import with_controlnets
    from denoisekit.train.run import load_model

    controlled = with_controlnets(load_model(runs["base"]), [(runs["controlnet"], 1.0)], control=runs["hint"])
    with pytest.raises(ValueError, match="already has control modules: load LoRA adapters first"):
        with_loras(controlled, [(runs["lora"], 1.0)])
