"""LoRA adapters (models/lora.py, models/lora_io.py): identity at B = 0, linearity in the weight, exact
merge/unmerge, several adapters, strict keys, files and the diffusers / kohya layouts."""

import pytest
import torch

from denoisekit.models import lora
from denoisekit.models.dit import DiT, DiTConfig
from denoisekit.models.unet import UNet

UNET = dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
            head_channels=8, norm_groups=4, context_dim=6)
DIT = dict(in_channels=1, hidden=16, depth=2, heads=2, patch=2, context_dim=6)


def net(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = UNet(**UNET) if kind == "unet" else DiT(DiTConfig(**DIT))
    with torch.no_grad():  # zero-initialised output layers would hide every change
        for p in m.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.3)
    return m.double().eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    return x, torch.tensor([0.3, 0.7], dtype=torch.float64), {"context": ctx, "context_mask": torch.ones(2, 3, dtype=torch.bool)}


def merged_weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a merged network computes with (``base_state_dict`` gives the unmerged ones)."""
    assert lora.is_merged(m)
    return {k.replace(".base_layer.", "."): v.clone() for k, v in m.state_dict().items() if "lora_" not in k}


def randomise(m: torch.nn.Module, name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.lora_parameters(m, name):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_zero_b_is_the_base_bit_for_bit_and_delta_linear_in_weight(kind):
    base = net(kind)
    x, t, c = inputs()
    y0 = base(x, t, c)
    m = lora.add_adapter(net(kind), lora.LoraConfig(rank=2, alpha=4.0, convs=True), "a")
    assert torch.equal(m(x, t, c), y0)  # B = 0: exactly the base
    assert kind == "dit" or any(k.endswith("conv1.lora_A.weight") for k in lora.adapter_tensors(m, "a"))
    randomise(m, "a", 0)
    d1 = m(x, t, c) - y0
    assert d1.abs().max() > 1e-3
    # the delta is linear in the weight only to first order (the network is nonlinear): check on the
    # weights, and that weight 0 is the base again
    lora.set_weights(m, {"a": 0.0})
    assert torch.equal(m(x, t, c), y0)
    w = {}
    for s in (1.0, 0.5, -2.0):
        lora.set_weights(m, {"a": s})
        lora.merge(m)
        w[s] = merged_weights(m)
        lora.unmerge(m)
    ref = net(kind).state_dict()
    for k in ref:
        dk = w[1.0][k] - ref[k]
        assert k.endswith(("qkv.weight", "kv.weight", "q.weight", "proj.weight", "conv1.weight", "conv2.weight")) \
            or not dk.any(), k
        torch.testing.assert_close(w[0.5][k] - ref[k], 0.5 * dk, rtol=0, atol=1e-12)
        torch.testing.assert_close(w[-2.0][k] - ref[k], -2.0 * dk, rtol=0, atol=1e-12)
    assert sum(int((w[1.0][k] - ref[k]).abs().gt(0).sum()) for k in ref) > 1000


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_merge_unmerge_exact_and_outputs_agree(kind):
    m = lora.add_adapter(net(kind).float(), lora.LoraConfig(rank=3), "a")
    randomise(m, "a", 0)
    lora.set_weights(m, {"a": 0.8})
    x, t, c = (v.float() if torch.is_tensor(v) else v for v in inputs())
    c = {"context": c["context"].float(), "context_mask": c["context_mask"]}
    before = {k: v.clone() for k, v in lora.base_state_dict(m).items()}
    y = m(x, t, c)
    lora.merge(m)
    assert lora.is_merged(m)
    assert (merged_weights(m)["blocks.0.attn.qkv.weight" if kind == "dit" else "mid.0.attn.attn.qkv.weight"]
            != before["blocks.0.attn.qkv.weight" if kind == "dit" else "mid.0.attn.attn.qkv.weight"]).all()
    torch.testing.assert_close(m(x, t, c), y, rtol=1e-4, atol=1e-5)
    lora.set_weights(m, {"a": 0.4})  # re-merged at the new weight
    lora.unmerge(m)
    after = lora.base_state_dict(m)
    for k in before:
        assert (after[k] - before[k]).abs().max() <= 1e-6, k
        assert torch.equal(after[k], before[k])  # in fact bit for bit: merge keeps the base weights
    with lora.disabled(m):
        torch.testing.assert_close(m(x, t, c), net(kind).float()(x, t, c), rtol=0, atol=0)


def test_two_adapters_give_w1_d1_plus_w2_d2():
    base = net("unet")
    m = lora.add_adapter(net("unet"), lora.LoraConfig(rank=2), "a")
    lora.add_adapter(m, lora.LoraConfig(rank=3, targets=("qkv", "proj")), "b")
    randomise(m, "a", 0)
    randomise(m, "b", 1)

    def delta(weights):
        lora.set_weights(m, weights)
        lora.merge(m)
        w = merged_weights(m)
        lora.unmerge(m)
        return {k: w[k] - v for k, v in base.state_dict().items()}

    d1, d2, both = delta({"a": 1.0}), delta({"b": 1.0}), delta({"a": 0.7, "b": -0.3})
    assert d1["mid.0.attn.cross.kv.weight"].abs().min() > 0 and not d2["mid.0.attn.cross.kv.weight"].any()
    assert d2["mid.0.attn.attn.qkv.weight"].abs().min() > 0
    for k in d1:
        torch.testing.assert_close(both[k], 0.7 * d1[k] - 0.3 * d2[k], rtol=0, atol=1e-12)
    assert lora.get_weights(m) == pytest.approx({"a": 0.7, "b": -0.3})
    x, t, c = inputs()
    lora.set_weights(m, {})
    assert torch.equal(m(x, t, c), base(x, t, c))


def test_trainable_only_the_new_adapter_and_bad_input():
    m = lora.add_adapter(net("dit"), lora.LoraConfig(rank=2), "a")
    lora.add_adapter(m, lora.LoraConfig(rank=2), "b", trainable=False)
    assert all(p.requires_grad for p in lora.lora_parameters(m, "a"))
    assert not any(p.requires_grad for p in lora.lora_parameters(m, "b"))
    assert not any(p.requires_grad for n, p in m.named_parameters() if "lora_" not in n)
    tensors = lora.adapter_tensors(m, "a")
    with pytest.raises(ValueError, match="matches no LoRA module"):
        lora.load_adapter_tensors(m, {**tensors, "blocks.9.attn.qkv.lora_A.weight": torch.zeros(2, 16)}, "a")
    with pytest.raises(ValueError, match="shape"):
        lora.load_adapter_tensors(m, {k: torch.zeros(1, 1) for k in tensors}, "a")
    with pytest.raises(ValueError, match="nothing to adapt"):
        lora.add_adapter(m, lora.LoraConfig(targets=("nope",)), "c")
    with pytest.raises(ValueError, match="already has"):
        lora.add_adapter(m, lora.LoraConfig(), "a")
    with pytest.raises(ValueError, match="no LoRA adapter named 'z'"):
        lora.set_weights(m, {"z": 1.0})
    with pytest.raises(ValueError, match="rank"):
        lora.LoraConfig(rank=0)


# ------------------------------------------------------------------------------------------ files, layouts
from denoisekit.io import save_tensors  # noqa: E402
from denoisekit.models import lora_io  # noqa: E402


def trained(kind: str, **cfg) -> torch.nn.Module:
    m = lora.add_adapter(net(kind), lora.LoraConfig(**({"rank": 2, "alpha": 3.0} | cfg)), "a")
    randomise(m, "a", 0)
    return m


@pytest.mark.parametrize("layout", ["denoisekit", "diffusers", "kohya"])
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_export_import_round_trip(tmp_path, kind, layout):
    m = trained(kind, convs=kind == "unet")
    f = lora_io.save_adapter(m, tmp_path / "a.safetensors", "a", base_sha256="abc", layout=layout)
    keys = set(lora_io.read_adapter(f)[0])
    if layout == "diffusers":
        pre = "unet" if kind == "unet" else "transformer"
        assert {f"{pre}.blocks.0.attn.to_v.lora_B.weight", f"{pre}.blocks.0.attn.to_out.0.lora_A.weight",
                f"{pre}.blocks.0.cross.to_k.lora_A.weight"} <= keys if kind == "dit" else \
            "unet.mid.0.attn.attn.to_q.lora_A.weight" in keys and "unet.mid.0.res.conv1.lora_A.weight" in keys
        assert not any(".qkv." in k or ".kv." in k for k in keys)
    if layout == "kohya":
        assert all(k.startswith("lora_unet_") and k.rpartition(".")[0].endswith(("lora_down", "lora_up", "alpha"))
                   or k.endswith(".alpha") for k in keys)
    back = net(kind)
    assert lora_io.load_adapter(back, f, weight=0.6, base_sha256="abc") == "a"
    ref = lora.adapter_tensors(m, "a")
    got = lora.adapter_tensors(back, "a")
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)  # A shared: fused back exactly
    assert lora.adapters(back)["a"].scale == pytest.approx(1.5)
    x, t, c = inputs()
    lora.set_weights(m, {"a": 0.6})
    torch.testing.assert_close(back(x, t, c), m(x, t, c), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="another base"):
        lora_io.load_adapter(net(kind), f, base_sha256="abd")


def test_foreign_diffusers_file_with_separate_q_k_v(tmp_path):
    """Three projections with their own A (and no to_v) fuse into qkv at rank 2 + 2 with a block B."""
    base = net("dit")
    d, g = 16, torch.Generator().manual_seed(3)
    a_q, a_k = (torch.randn(2, d, generator=g, dtype=torch.float64) for _ in range(2))
    b_q, b_k = (torch.randn(d, 2, generator=g, dtype=torch.float64) for _ in range(2))
    save_tensors(tmp_path / "x.safetensors", {
        "transformer.blocks.1.attn.to_q.lora_A.weight": a_q, "transformer.blocks.1.attn.to_q.lora_B.weight": b_q,
        "transformer.blocks.1.attn.to_k.lora_A.weight": a_k, "transformer.blocks.1.attn.to_k.lora_B.weight": b_k},
        metadata={"lora_adapter_metadata": '{"r": 2, "lora_alpha": 4}'})
    m = net("dit")
    lora_io.load_adapter(m, tmp_path / "x.safetensors", "x")
    assert lora.module_ranks(lora.adapter_tensors(m, "x")) == {"blocks.1.attn.qkv": 4}
    lora.merge(m)
    w, w0 = merged_weights(m)["blocks.1.attn.qkv.weight"], base.state_dict()["blocks.1.attn.qkv.weight"]
    torch.testing.assert_close(w[:d] - w0[:d], 2.0 * b_q @ a_q, rtol=0, atol=1e-12)
    torch.testing.assert_close(w[d:2 * d] - w0[d:2 * d], 2.0 * b_k @ a_k, rtol=0, atol=1e-12)
    assert torch.equal(w[2 * d:], w0[2 * d:])


def test_bad_files_are_one_line_and_leave_the_network(tmp_path):
    m = trained("dit")
    f = lora_io.save_adapter(m, tmp_path / "k.safetensors", "a", layout="kohya")
    tensors, meta = lora_io.read_adapter(f)
    save_tensors(tmp_path / "bad.safetensors", {**tensors, "lora_unet_blocks_7_attn_to_q.lora_down.weight":
                                                torch.zeros(2, 16), "lora_unet_blocks_7_attn_to_q.lora_up.weight":
                                                torch.zeros(16, 2)})
    fresh = net("dit")
    with pytest.raises(ValueError, match="bad.safetensors.*lora_unet_blocks_7_attn_to_q.*matches no module"):
        lora_io.load_adapter(fresh, tmp_path / "bad.safetensors")
    assert not lora.adapters(fresh) and not lora.lora_layers(fresh)
    other = DiT(DiTConfig(**(DIT | {"hidden": 32}))).double()  # same names, other shapes
    with pytest.raises(ValueError, match="k.safetensors.*do not fit its weight"):
        lora_io.load_adapter(other, f)
    assert not lora.lora_layers(other) and set(other.state_dict()) == set(DiT(DiTConfig(**(DIT | {"hidden": 32}))).state_dict())
    native = lora_io.save_adapter(m, tmp_path / "n.safetensors", "a")  # our layout: checked when copied in
    with pytest.raises(ValueError, match="n.safetensors.*shape"):
        lora_io.load_adapter(other, native)
    assert not lora.lora_layers(other)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        lora_io.load_adapter(fresh, tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------------------ recipe and sampling
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.mark.slow
def test_lora_recipe_stores_only_the_adapter_and_sample_lora(tmp_path, capsys):
    from recipe_cases import lora as case

    from denoisekit.cli import main
    from denoisekit.engine import Engine
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.generation import generate
    from denoisekit.generation.adapters import set_lora_weights, with_loras
    from denoisekit.io import load_tensors
    from denoisekit.train.run import load_model

    run = tmp_path / "run"
    Engine(case.make(tmp_path), run, progress=False).fit()
    base = case.base_run(tmp_path)
    saved = load_tensors(latest_checkpoint(run / "checkpoints") / "model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert (run / "lora.safetensors").stat().st_size < 50_000

    def images(*extra):
        out = tmp_path / f"s{len(list(tmp_path.glob('s*.npz')))}.npz"
        assert main(["sample", str(base), "--n", "3", "--nfe", "3", "--label", "2", "--quiet", "--out", str(out),
                     *extra]) == 0
        return np.load(out)["images"]

    plain = images()
    assert np.array_equal(images("--lora", f"{run / 'lora.safetensors'}:0"), plain)  # weight 0: the base
    assert np.array_equal(images("--lora", f"{run}:0", "--lora", f"{run}:0.0"), plain)

    model, labels = load_model(base), torch.full((3,), 2)
    ref = generate(model, 3, labels, nfe=3, seed=0)
    adapted = with_loras(model, [(run, 1.0)])
    assert adapted.sha256 != model.sha256
    changed = generate(adapted, 3, labels, nfe=3, seed=0)
    assert (changed - ref).abs().max() > 1e-4  # a trained adapter changes the samples
    # the lora run itself loads as its base plus its adapter at weight 1 (EMA weights, like lora.safetensors)
    assert torch.equal(generate(load_model(run), 3, labels, nfe=3, seed=0), changed)
    set_lora_weights(adapted, {"run": 0.0})  # and weight 0 is the base again, without reloading
    assert torch.equal(generate(adapted, 3, labels, nfe=3, seed=0), ref)

    capsys.readouterr()
    assert main(["sample", str(base), "--n", "1", "--out", str(tmp_path / "x.npz"), "--lora", f"{run}:x"]) == 2
    assert "the weight after ':' must be a number" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    from denoisekit.models import lora_io
    t, meta = lora_io.read_adapter(run / "lora.safetensors")
    save_tensors(other, t, {**meta, "base_sha256": "0" * 64})
    assert main(["sample", str(base), "--n", "1", "--out", str(tmp_path / "x.npz"), "--lora", str(other)]) == 2
    assert "other.safetensors' was trained on another base" in capsys.readouterr().err


def test_foreign_kohya_file_with_per_module_rank_and_alpha(tmp_path):
    base, g = net("dit"), torch.Generator().manual_seed(4)
    spec = {"blocks_0_attn_to_out_0": (2, 1.0, 16, 16), "blocks_1_cross_to_q": (3, 6.0, 16, 16),
            "blocks_1_cross_to_v": (1, 0.5, 6, 16)}
    tensors, want = {}, {}
    for mod, (r, alpha, d_in, d_out) in spec.items():
        a = torch.randn(r, d_in, generator=g, dtype=torch.float64)
        b = torch.randn(d_out, r, generator=g, dtype=torch.float64)
        tensors |= {f"lora_unet_{mod}.lora_down.weight": a, f"lora_unet_{mod}.lora_up.weight": b,
                    f"lora_unet_{mod}.alpha": torch.tensor(alpha)}
        want[mod] = alpha / r * b @ a
    save_tensors(tmp_path / "k.safetensors", tensors)
    m = net("dit")
    lora_io.load_adapter(m, tmp_path / "k.safetensors")
    assert lora.module_ranks(lora.adapter_tensors(m, "k")) == {"blocks.0.attn.proj": 2, "blocks.1.cross.q": 3,
                                                               "blocks.1.cross.kv": 1}
    lora.merge(m)
    w, w0 = merged_weights(m), base.state_dict()
    d = lambda k: w[k] - w0[k]  # noqa: E731
    torch.testing.assert_close(d("blocks.0.attn.proj.weight"), want["blocks_0_attn_to_out_0"], rtol=0, atol=1e-12)
    torch.testing.assert_close(d("blocks.1.cross.q.weight"), want["blocks_1_cross_to_q"], rtol=0, atol=1e-12)
    kv = d("blocks.1.cross.kv.weight")  # (2d, context_dim): to_k rows untouched, to_v rows adapted
    assert not kv[:16].any()
    torch.testing.assert_close(kv[16:], want["blocks_1_cross_to_v"], rtol=0, atol=1e-12)
    assert sum(bool(d(k).any()) for k in w0) == 3


def test_lora_recipe_config_errors(tmp_path):
    from recipe_cases.diffusion import CONFIG

    from denoisekit.train.config import apply_overrides, config_from_dict
    from denoisekit.train.recipes import RECIPES

    recipe = RECIPES["lora"](config_from_dict(apply_overrides(CONFIG, ["train.recipe=lora"])))
    with pytest.raises(ValueError, match="init.from_run is not set"):
        recipe.dependencies()
    with pytest.raises(ValueError, match="lora.rank must be an integer >= 1"):
        config_from_dict(apply_overrides(CONFIG, ["lora.rank=0"]))
    with pytest.raises(ValueError, match="lora: unknown key|lora.rnak"):
        config_from_dict(apply_overrides(CONFIG, ["lora.rnak=2"]))


@pytest.mark.slow
def test_a_diffusers_lora_on_an_imported_diffusers_unet(tmp_path):
    """A LoRA made by diffusers' own PEFT integration (``unet.add_adapter``), saved in its layout and loaded onto the
    same U-Net as a denoisekit network, computes what diffusers computes; kohya export of it round-trips."""
    import copy
    import json

    import peft
    from peft.utils import get_peft_model_state_dict

    from denoisekit.models.diffusers_unet import DiffusersUNet, DiffusersUNetConfig

    cfg = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
           "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
           "cross_attention_dim": 6, "attention_head_dim": 4, "norm_num_groups": 4}
    torch.manual_seed(0)
    mine = DiffusersUNet(DiffusersUNetConfig(cls="UNet2DConditionModel", config=json.dumps(cfg), context_dim=6)).eval()
    theirs = copy.deepcopy(mine.unet)
    theirs.add_adapter(peft.LoraConfig(r=2, lora_alpha=3, target_modules=list(lora.DIFFUSERS_TARGETS),
                                       init_lora_weights=False))
    sd = {f"unet.{k}": v for k, v in get_peft_model_state_dict(theirs).items()}
    save_tensors(tmp_path / "d.safetensors", sd, {"lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": 3})})
    x, t, c = inputs()
    x, t, ctx = x.float(), torch.tensor([10.0, 500.0]), c["context"].float()
    with torch.no_grad():
        want = theirs(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        base = mine(x, t, {"context": ctx})
        lora_io.load_adapter(mine, tmp_path / "d.safetensors", "d")
        got = mine(x, t, {"context": ctx})
    assert (want - base).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert len(lora.adapter_tensors(mine, "d")) == len(sd)
    back = lora_io.export_tensors(mine, "d", "diffusers")
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)  # the same file, key for key
    k = lora_io.save_adapter(mine, tmp_path / "k.safetensors", "d", layout="kohya")
    assert any(key.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.")
               for key in lora_io.read_adapter(k)[0])
    lora_io.load_adapter(mine, k, "k", 0.0)
    assert torch.equal(lora.adapter_tensors(mine, "k")["unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight"],
                       lora.adapter_tensors(mine, "d")["unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight"])
