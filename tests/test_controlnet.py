"""ControlNet and T2I-Adapter over the U-Net: the residual seam is the plain U-Net bit for bit when unused, a
fresh (zero-initialised) control module or scale 0 is the base exactly, shapes match every level, several
modules add up, the denoiser wrapper gates by sigma under CFG and two samplers."""

from __future__ import annotations

import pytest
import torch

from denoisekit.guidance import ClassifierFreeGuidance
from denoisekit.models.controlnet import (ControlConfig, ControlledDenoiser, ControlledNet, ControlNet, T2IAdapter,
                                          build_control, with_controls)
from denoisekit.models.unet import UNet
from denoisekit.prediction import Denoiser
from denoisekit.process import get_process
from denoisekit.samplers.run import sample

SMALL = dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=(1, 2), attention_levels=(1,),
             head_channels=8, norm_groups=4, num_classes=3)


def _unet(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(**{**SMALL, **kw})
    with torch.no_grad():  # non-zero everywhere, so that every path matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _randomise(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def _inputs(b: int = 2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 1, 8, 8, generator=g)
    t = torch.rand(b, generator=g)
    labels = torch.arange(b) % 3
    hint = (torch.rand(b, 1, 8, 8, generator=g) > 0.5).float()
    return x, t, labels, hint


def test_seam_without_residuals_is_bit_identical():
    net = _unet()
    x, t, labels, _ = _inputs()
    out = net(x, t, labels)
    # The same computation by hand through the public pieces: embed, encode, decoder.
    h, emb, ctx, mask = net.embed(x, t, labels)
    mid, skips = net.encode(h, emb, ctx, mask)
    zeros = [torch.zeros_like(s) for s in skips] + [torch.zeros_like(mid)]
    assert torch.equal(net(x, t, labels, residuals=None, features=None), out)
    assert torch.equal(net(x, t, labels, residuals=zeros), out)  # + 0.0 changes no float
    assert len(skips) == len(net.skip_channels)
    assert [s.shape[1] for s in skips] == net.skip_channels
    with pytest.raises(ValueError, match="residuals: expected"):
        net(x, t, labels, residuals=zeros[:-1])
    with pytest.raises(ValueError, match="features: expected"):
        net(x, t, labels, features=[torch.zeros(1)])


def test_residuals_change_the_output_where_added():
    net = _unet()
    x, t, labels, _ = _inputs()
    h, emb, ctx, mask = net.embed(x, t, labels)
    mid, skips = net.encode(h, emb, ctx, mask)
    res = [torch.zeros_like(s) for s in skips] + [torch.ones_like(mid)]
    assert not torch.allclose(net(x, t, labels, residuals=res), net(x, t, labels))


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_fresh_control_is_the_base_exactly(kind):
    net = _unet()
    x, t, labels, hint = _inputs()
    control = build_control(net, ControlConfig(kind=kind))
    wrapped = ControlledNet(net, [control])
    base = net(x, t, labels)
    assert torch.equal(wrapped(x, t, {"labels": labels, "control": hint}), base)
    assert torch.equal(wrapped(x, t, {"labels": labels}), base)  # no control image: the base


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_scale_zero_is_the_base_and_scale_matters(kind):
    net = _unet()
    x, t, labels, hint = _inputs()
    control = _randomise(build_control(net, ControlConfig(kind=kind)))
    wrapped = ControlledNet(net, [control], 0.0)
    cond = {"labels": labels, "control": hint}
    base = net(x, t, labels)
    assert torch.equal(wrapped(x, t, cond), base)
    wrapped.set_scales(1.0)
    assert not torch.allclose(wrapped(x, t, cond), base, atol=1e-4)


def test_controlnet_copies_the_encoder_and_residual_shapes_match():
    net = _unet()
    x, t, labels, hint = _inputs()
    cn = _randomise(ControlNet(net, ControlConfig()))
    fresh = ControlNet(net, ControlConfig())
    base_sd = net.state_dict()
    for k, v in fresh.encoder.state_dict().items():
        assert torch.equal(v, base_sd[k]), k
    assert not any(k.startswith(("up.", "norm_out", "conv_out")) for k in fresh.encoder.state_dict())
    res = cn(x, t, labels, hint)
    h, emb, ctx, mask = net.embed(x, t, labels)
    mid, skips = net.encode(h, emb, ctx, mask)
    assert [r.shape for r in res] == [s.shape for s in skips] + [mid.shape]
    feats = _randomise(T2IAdapter(net, ControlConfig(kind="t2i_adapter")))(hint)
    assert [f.shape[1:] for f in feats] == [(8, 8, 8), (16, 4, 4)]
    with pytest.raises(ValueError, match="control image must have shape"):
        cn(x, t, labels, hint[:, :, :4])


def test_several_controls_sum():
    net = _unet()
    x, t, labels, hint = _inputs()
    a = _randomise(ControlNet(net, ControlConfig()), 1)
    b = _randomise(ControlNet(net, ControlConfig(hint_channels=2)), 2)
    c = _randomise(T2IAdapter(net, ControlConfig(kind="t2i_adapter")), 3)
    hints = torch.cat([hint, torch.rand(2, 2, 8, 8), 1 - hint], 1)
    w = (0.7, 0.4, 1.3)
    out = ControlledNet(net, [a, b, c], w)(x, t, {"labels": labels, "control": hints})
    ra, rb = a(x, t, labels, hints[:, :1]), b(x, t, labels, hints[:, 1:3])
    feats = c(hints[:, 3:])
    res = [w[0] * p + w[1] * q for p, q in zip(ra, rb)]
    expect = net(x, t, labels, residuals=res, features=[w[2] * f for f in feats])
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cond\\['control'\\] must have shape"):
        ControlledNet(net, [a, b, c])(x, t, {"labels": labels, "control": hint})


def test_t2i_adapter_runs_once_per_sample():
    net = _unet()
    adapter = _randomise(T2IAdapter(net, ControlConfig(kind="t2i_adapter")))
    den = ControlledDenoiser(Denoiser(with_controls(net, [adapter]), get_process("ddpm"), "eps"))
    _, _, labels, hint = _inputs()
    with torch.no_grad():
        sample(den, (2, 1, 8, 8), sampler="euler", nfe=6, cond={"labels": labels, "control": hint},
               generator=torch.Generator().manual_seed(0))
    assert adapter.calls == 1


def _den(net, controls, **kw):
    return ControlledDenoiser(Denoiser(with_controls(net, controls), get_process("ddpm"), "eps"), **kw)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_wrapper_with_cfg_and_two_samplers(sampler):
    net = _unet()
    base = Denoiser(net, get_process("ddpm"), "eps")
    cn = _randomise(ControlNet(net, ControlConfig()))
    _, _, labels, hint = _inputs()
    cond = {"labels": labels, "control": hint}

    def run(den):
        with torch.no_grad():
            return sample(ClassifierFreeGuidance(den, 2.0, null_label=3), (2, 1, 8, 8), sampler=sampler, nfe=6,
                          cond=cond, generator=torch.Generator().manual_seed(0))

    ref = run(ClassifierFreeGuidanceFree(base))
    assert torch.equal(run(_den(net, [ControlNet(net, ControlConfig())])), ref)  # fresh: the base exactly
    wrapped = _den(net, [cn])
    wrapped.controlled.set_scales(0.0)
    assert torch.equal(run(wrapped), ref)  # scale 0: the base, bit for bit
    wrapped.controlled.set_scales(1.0)
    full = run(wrapped)
    assert not torch.allclose(full, ref, atol=1e-4)
    half = run(_den(net, [cn], start=0.0, end=0.5))
    assert not torch.allclose(half, ref, atol=1e-4) and not torch.allclose(half, full, atol=1e-4)


class ClassifierFreeGuidanceFree(torch.nn.Module):
    """The base denoiser, dropping cond['control'] (what an uncontrolled model sees)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.process = inner, inner.process

    def forward(self, y, sigma, cond=None):
        rest = {k: v for k, v in cond.items() if k != "control"} if isinstance(cond, dict) else cond
        return self.inner(y, sigma, rest)


def test_interval_gates_per_sample():
    net = _unet()
    cn = _randomise(ControlNet(net, ControlConfig()))
    base = Denoiser(net, get_process("ddpm"), "eps")
    den = _den(net, [cn], start=0.3, end=0.8)
    y, _, labels, hint = _inputs(3)
    p = base.process
    # one sample at each side of the window and one inside: t = 0.9 (done 0.1), 0.5 (done 0.5), 0.1 (done 0.9)
    sigma = p.sigma_ve(torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64))
    with torch.no_grad():
        out = den(y, sigma, {"labels": labels, "control": hint})
        plain = base(y, sigma, labels)
        full = _den(net, [cn])(y, sigma, {"labels": labels, "control": hint})
    assert torch.equal(out[0], plain[0]) and torch.equal(out[2], plain[2])
    # the window runs the control on a sub-batch: float32 sums in another order (1.5e-6 seen on some CPUs)
    torch.testing.assert_close(out[1], full[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[1], plain[1], atol=1e-4)
    with pytest.raises(ValueError, match="start <= end"):
        _den(net, [cn], start=0.9, end=0.1)


def test_text_wrapper_keeps_its_original():
    from denoisekit.models.text import TextConditioned

    net = _unet(num_classes=None, context_dim=16)
    text = TextConditioned(net, "tokens", dim=16)
    out = with_controls(text, [ControlNet(net, ControlConfig())])
    assert text.net is net and isinstance(out.net, ControlledNet) and out.text_encoder is text.text_encoder


# ------------------------------------------------------------------------------------------ control signals
def test_control_signals_and_fidelity():
    from denoisekit.data.control import (control_fidelity, control_signal, edge_f1, foreground_mask, mask_iou,
                                         position_heatmaps, sobel_edges)

    x = -torch.ones(2, 3, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0  # a white square on black
    edges = sobel_edges(x)
    assert edges.shape == (2, 1, 16, 16) and edges[0, 0, 0, 0] == 0 and edges[0, 0, 4, 4] == 1
    assert edges[0, 0, 8, 8] == 0  # flat inside: no edge
    mask = foreground_mask(x)
    assert mask.sum() == 2 * 64 and torch.equal(control_signal("mask", {"image": x}), mask)
    assert torch.equal(control_fidelity("edges", x, edges), torch.ones(2))
    assert torch.equal(control_fidelity("mask", x, mask), torch.ones(2))
    assert torch.equal(mask_iou(mask, torch.zeros_like(mask)), torch.zeros(2))
    shifted = torch.roll(edges, 1, dims=3)  # one pixel off: within the tolerance
    assert torch.allclose(edge_f1(shifted, edges), torch.ones(2))
    far = torch.roll(edges, (4, 4), dims=(2, 3))
    assert (edge_f1(far, edges) < 0.7).all()
    heat = position_heatmaps(torch.tensor([[[0.3125, 0.6875], [-1.0, -1.0]]]), (8, 8))  # x, y: pixel (2, 5)
    assert heat.shape == (1, 1, 8, 8) and heat[0, 0, 5, 2] == 1 and heat[0, 0, 1, 6] < 0.1
    with pytest.raises(ValueError, match="positions"):
        control_signal("positions", {"image": x})


# ------------------------------------------------------------------------------------------ recipe and sampling
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.mark.slow
def test_recipe_stores_only_the_module_and_sample_controlnet(tmp_path, capsys):
    from PIL import Image
    from recipe_cases import controlnet as case

    from denoisekit.cli import main
    from denoisekit.engine import Engine
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.generation import generate
    from denoisekit.generation.control import with_controlnets
    from denoisekit.io import load_tensors, save_tensors
    from denoisekit.models.controlnet import read_control
    from denoisekit.train.run import load_model, load_run

    run = tmp_path / "run"
    Engine(case.make(tmp_path), run, progress=False).fit()
    base = case.base_run(tmp_path)
    saved = load_tensors(latest_checkpoint(run / "checkpoints") / "model.safetensors")
    assert saved and all(k.startswith("controls.0.") for k in saved)
    assert (run / "controlnet.safetensors").is_file()
    with pytest.raises(ValueError, match="--controlnet"):
        load_run(run)

    control = np.zeros((8, 8), np.uint8)
    control[2:6, 2] = control[2:6, 5] = control[2, 2:6] = control[5, 2:6] = 255
    Image.fromarray(control).save(tmp_path / "edges.png")

    def images(*extra):
        out = tmp_path / f"s{len(list(tmp_path.glob('s*.npz')))}.npz"
        assert main(["sample", str(base), "--n", "3", "--nfe", "4", "--label", "2", "--quiet", "--out", str(out),
                     *extra]) == 0
        return np.load(out)["images"]

    plain = images()
    flags = ["--controlnet", str(run), "--control", str(tmp_path / "edges.png")]
    assert np.array_equal(images(*flags, "--control-scale", "0"), plain)  # scale 0: the base
    assert np.array_equal(images(*flags, "--control-start", "1", "--control-end", "1"), plain)  # never on

    model, labels = load_model(base), torch.full((3,), 2)
    hint = torch.as_tensor(control / 255.0, dtype=torch.float32)[None, None]
    ref = generate(model, 3, labels, nfe=4, seed=0)
    controlled = with_controlnets(model, [(run, 1.0)], control=hint)
    assert (generate(controlled, 3, labels, nfe=4, seed=0) - ref).abs().max() > 1e-5  # trained: it acts
    zero = with_controlnets(model, [(run, 0.0)], control=hint)
    assert torch.equal(generate(zero, 3, labels, nfe=4, seed=0), ref)

    capsys.readouterr()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "small.png")
    assert main(["sample", str(base), "--n", "1", "--out", str(tmp_path / "x.npz"), "--controlnet", str(run),
                 "--control", str(tmp_path / "small.png")]) == 2
    err = capsys.readouterr().err
    assert "small.png" in err and "need (1, 8, 8)" in err
    t, meta = read_control(run / "controlnet.safetensors")
    save_tensors(tmp_path / "other.safetensors", t, {**meta, "base_sha256": "0" * 64})
    assert main(["sample", str(base), "--n", "1", "--out", str(tmp_path / "x.npz"), "--controlnet",
                 str(tmp_path / "other.safetensors"), "--control", str(tmp_path / "edges.png")]) == 2
    assert "other.safetensors' was trained on another base" in capsys.readouterr().err


def test_bad_input_is_one_clear_error():
    from denoisekit.models.controlnet import find_unet

    net = _unet()
    cn = ControlNet(net, ControlConfig())
    with pytest.raises(ValueError, match=r"default control image must have shape \(1, C, H, W\)"):
        _den(net, [cn], control=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="need a U-Net"):
        find_unet(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="control kind"):
        ControlConfig(kind="pose")
    with pytest.raises(ValueError, match="power of 2"):
        ControlConfig(downsample=3)
