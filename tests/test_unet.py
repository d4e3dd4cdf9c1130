"""ADM U-Net (models/unet.py) and the shared blocks it uses (models/layers.py): shapes, time conventions,
conditioning (labels, cross-attention with masks, concat channels), initialisation, errors, training."""

import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit.models.layers import fourier_features, parse_conditioning
from denoisekit.models.unet import UNet, UNetConfig

TINY = dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_channels=8, norm_groups=8)


def tiny(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(**(TINY | kw)).double()


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised layers random weights, so outputs depend on every input."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kw, shape", [
    (dict(in_channels=1), (2, 1, 8, 8)),
    (dict(in_channels=3), (2, 3, 16, 24)),                       # non-square
    (dict(in_channels=2, channel_mult=(1, 2, 2)), (1, 2, 12, 4)),  # 3 levels: multiples of 4
    (dict(in_channels=4, out_channels=2, channels_last=True), (3, 4, 6, 10)),
])
def test_output_shape(kw, shape):
    net = randomise(tiny(**kw))
    x, time = rand(*shape), torch.rand(shape[0], dtype=torch.float64)
    out = net(x, time)
    assert out.shape == (shape[0], kw.get("out_channels", shape[1]), *shape[2:])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(net(x[-1:], time[-1:]), out[-1:])  # per sample: no batch statistics (GroupNorm)


def test_zero_init_output():
    """The output conv starts at zero (Dhariwal & Nichol 2021): the initial network is the zero map."""
    out = tiny(in_channels=3, num_classes=4)(rand(2, 3, 8, 8), torch.tensor([0.1, 0.9]), torch.tensor([0, 3]))
    assert torch.equal(out, torch.zeros_like(out))


def test_time_conventions():
    """t in [0, 1], step indices 0..999 (float or long) and EDM's c_noise = log(sigma)/4 all work."""
    net = randomise(tiny(in_channels=1))
    x = rand(1, 1, 8, 8).expand(4, -1, -1, -1)
    for time in [torch.tensor([0.0, 0.3, 0.31, 1.0]), torch.tensor([0.0, 500.0, 501.0, 999.0]),
                 torch.tensor([0, 500, 501, 999]), torch.log(torch.tensor([0.002, 1.0, 1.05, 80.0])) / 4]:
        out = net(x, time.double() if time.is_floating_point() else time)
        assert torch.isfinite(out).all()
        # neighbouring times (samples 1 and 2) give distinct outputs
        assert (out[1] - out[2]).abs().max() > 1e-6 * out.abs().max()
    assert torch.equal(net(x[:1], 0.5), net(x[:1], torch.tensor([0.5], dtype=torch.float64)))


def test_time_features_resolve_every_convention():
    """Log-spaced frequencies: nearby times are separated, far ones not aliased, in every convention."""
    for grid in [torch.linspace(0, 1, 1001), torch.arange(1000.0), torch.linspace(-1.6, 1.1, 271)]:
        f = fourier_features(grid, 128)
        step = (f[1:] - f[:-1]).norm(dim=1)
        assert step.min() > 0.05, grid[-1]                       # the finest step is visible
        dist = torch.cdist(f[::10], f[::10])
        far = dist[~torch.eye(len(dist), dtype=torch.bool)]
        assert far.min() > step.min(), grid[-1]                  # no two distant times collide


def test_class_labels_and_null_label():
    net = randomise(tiny(in_channels=1, num_classes=3))
    x, t = rand(1, 1, 8, 8).expand(4, -1, -1, -1), torch.full((4,), 0.5, dtype=torch.float64)
    out = net(x, t, torch.tensor([0, 1, 3, -1]))
    assert (out[0] - out[1]).abs().max() > 1e-6                  # labels matter
    assert torch.equal(out[2], out[3])                           # 3 == num_classes == -1: the null label
    assert torch.allclose(net(x, t), out[2:3].expand(4, -1, -1, -1))  # no cond = null label
    assert torch.allclose(net(x, t, {"labels": torch.tensor([0, 1, 3, 3])}), out)
    for bad in [torch.tensor([0, 1, 4, 0]), torch.tensor([0, -2, 1, 1])]:
        with pytest.raises(ValueError, match="0..2"):
            net(x, t, bad)
    with pytest.raises(ValueError, match="integers"):
        net(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny(in_channels=1)(x, t, torch.tensor([0, 1, 2, 0]))


def test_cross_attention_mask():
    """Masked context tokens do not affect the output; a fully masked row equals no context."""
    net = randomise(tiny(in_channels=2, context_dim=5))
    x, t = rand(3, 2, 8, 8), torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    ctx = rand(3, 4, 5, seed=1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])   # 0/1 integers, as tokenizers give
    out = net(x, t, {"context": ctx, "context_mask": mask})
    changed = torch.where(mask.bool()[..., None], ctx, rand(3, 4, 5, seed=2))
    assert torch.allclose(net(x, t, {"context": changed, "context_mask": mask.bool()}), out, atol=1e-12)
    assert not torch.allclose(net(x, t, {"context": rand(3, 4, 5, seed=2), "context_mask": mask}), out)
    assert torch.allclose(out[2], net(x[2:], t[2:])[0], atol=1e-12)   # all masked == unconditional
    assert not torch.allclose(out[0], net(x[:1], t[:1])[0])          # context matters
    with pytest.raises(ValueError, match=r"\(3, L, 5\)"):
        net(x, t, {"context": rand(3, 4, 6)})
    with pytest.raises(ValueError, match="no cross-attention"):
        tiny(in_channels=2)(x, t, {"context": ctx})


def test_concat_channels():
    net = randomise(tiny(in_channels=1, concat_channels=2))
    x, t = rand(2, 1, 8, 8), torch.tensor([0.2, 0.5], dtype=torch.float64)
    a = net(x, t, {"concat": rand(2, 2, 8, 8, seed=1)})
    b = net(x, t, {"concat": rand(2, 2, 8, 8, seed=2)})
    assert a.shape == x.shape and not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"\(2, 2, 8, 8\)"):
        net(x, t)
    with pytest.raises(ValueError, match=r"\(2, 2, 8, 8\)"):
        net(x, t, {"concat": rand(2, 2, 4, 4)})


def test_bad_inputs_and_config():
    net = tiny(in_channels=3, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(rand(1, 3, 10, 8), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(rand(1, 1, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="allowed: labels, context"):
        net(rand(1, 3, 8, 8), torch.zeros(1), {"label": torch.zeros(1, dtype=torch.long)})
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(channel_mult=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNetConfig(channel_mult=(1, 2), num_res_blocks=(1, 2, 3))
    with pytest.raises(ValueError, match="head_channels"):
        UNetConfig(channels=24, head_channels=32)
    cfg = UNetConfig(channel_mult=[1, 2], attention_levels=[1], num_res_blocks=[1, 2])  # YAML lists
    assert cfg.channel_mult == (1, 2) and hash(cfg)


def test_parse_conditioning_accepts_plain_labels_and_dicts():
    x = torch.zeros(2, 1, 4, 4)
    info = parse_conditioning(torch.tensor([1, -1]), x, num_classes=5)
    assert info.labels.tolist() == [1, 5] and info.context is None
    assert parse_conditioning({"labels": None}, x, num_classes=5).labels.tolist() == [5, 5]


def test_denoiser_wraps_unet():
    net = randomise(tiny(in_channels=1, num_classes=2))
    den = Denoiser(net, get_process("ddpm"), "eps")
    y = rand(2, 1, 8, 8)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    out = den(y, sigma, torch.tensor([0, 1]))
    assert out.shape == y.shape and torch.isfinite(out).all()
    other = den(y, sigma, torch.tensor([1, 1]))
    assert not torch.allclose(out[0], other[0]) and torch.equal(out[1], other[1])  # the label reaches the U-Net
    # at initialisation (zero output conv) the eps-network predicts eps = 0, so x0_hat = y - sigma * 0 = y
    # (up to float64 round-off: the input goes through the native frame, y * alpha, and back)
    zero = Denoiser(tiny(in_channels=1, num_classes=2), get_process("ddpm"), "eps")
    torch.testing.assert_close(zero(y, sigma, torch.tensor([0, 1])), y, rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # trains
def test_tiny_overfit():
    """A few dozen Adam steps on 4 images (fixed noise levels) cut the denoising loss by a large factor."""
    torch.manual_seed(0)
    net = UNet(**(TINY | dict(in_channels=1, num_classes=4)))
    g = torch.Generator().manual_seed(0)
    x0 = torch.sign(torch.randn(4, 1, 8, 8, generator=g))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7])
    a, s = torch.cos(t * 1.5)[:, None, None, None], torch.sin(t * 1.5)[:, None, None, None]
    x = a * x0 + s * torch.randn(4, 1, 8, 8, generator=g)
    labels = torch.arange(4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (net(x, t, labels) - x0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], losses[::6]


def test_gradients_reach_every_parameter():
    """Zero-initialised output layers block gradients only for the first steps."""
    net = tiny(in_channels=1, num_classes=3, context_dim=4, concat_channels=1, dropout=0.1)
    x, t = rand(2, 1, 8, 8), torch.tensor([0.3, 0.6], dtype=torch.float64)
    cond = {"labels": torch.tensor([0, 2]), "context": rand(2, 3, 4), "concat": rand(2, 1, 8, 8, seed=3)}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (net(x, t, cond) - x).square().mean().backward()
        opt.step()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, dead
