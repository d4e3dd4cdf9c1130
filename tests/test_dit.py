"""DiT (models/dit.py): shapes, positional embedding, adaLN-Zero initialisation, conditioning, sizes, training."""

import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit.models.dit import DIT_SIZES, DiT, DiTConfig, dit_config, sincos_2d

TINY = dict(hidden=32, depth=2, heads=4, patch=2)


def tiny(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(**(TINY | kw))).double()


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised (adaLN-Zero, output) layers random weights."""
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
    (dict(in_channels=3, patch=4), (2, 3, 16, 8)),              # non-square grid 4x2
    (dict(in_channels=4, out_channels=8), (1, 4, 6, 10)),       # learned-sigma style output
    (dict(in_channels=2, patch=1), (2, 2, 3, 5)),
])
def test_output_shape(kw, shape):
    net = randomise(tiny(**kw))
    x, time = rand(*shape), torch.rand(shape[0], dtype=torch.float64)
    out = net(x, time)
    assert out.shape == (shape[0], kw.get("out_channels", shape[1]), *shape[2:])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(net(x[-1:], time[-1:]), out[-1:])  # per sample: attention stays within an image


def test_unpatchify_inverts_patchify():
    """With an identity patch embedding and output map, the blocks' zero-init makes DiT return its input."""
    c, p = 2, 2
    net = tiny(in_channels=c, patch=p, hidden=c * p * p, heads=2)   # hidden = patch dim, so both maps can be I
    with torch.no_grad():
        eye = torch.eye(c * p * p, dtype=torch.float64)
        # patch embedding: token feature (ch, i, j) = x[ch, i, j] within the patch
        net.patch_embed.weight.copy_(eye.view(c * p * p, c, p, p))
        net.patch_embed.bias.zero_()
        # output: token feature (ch, i, j) -> unpatchify order (i, j, ch)
        perm = torch.arange(c * p * p).view(c, p, p).permute(1, 2, 0).reshape(-1)
        net.linear_out.weight.copy_(eye[perm])
        net.norm_out = torch.nn.Identity()
        net.pos_embed = lambda *a: 0.0
    x = rand(2, c, 6, 4)
    assert torch.allclose(net(x, torch.zeros(2)), x)


def test_sincos_2d_embedding():
    pe = sincos_2d(8, 3, 5)
    assert pe.shape == (15, 8)
    assert torch.equal(pe[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.float64))   # position (0, 0)
    # first half depends on the row only, second half on the column only (row-major tokens)
    grid = pe.view(3, 5, 8)
    assert torch.equal(grid[:, :1, :4].expand(3, 5, 4), grid[:, :, :4])
    assert torch.equal(grid[:1, :, 4:].expand(3, 5, 4), grid[:, :, 4:])
    assert torch.cdist(pe, pe).fill_diagonal_(1).min() > 0.1            # all positions distinct


def test_adaln_zero_init():
    """adaLN-Zero (Peebles & Xie 2023, Sec. 3.2): gates and output start at zero, so the output is zero."""
    net = tiny(in_channels=3, num_classes=5, context_dim=4)
    out = net(rand(2, 3, 8, 8), torch.tensor([0.1, 0.9]), {"labels": torch.tensor([0, 5]), "context": rand(2, 3, 4)})
    assert torch.equal(out, torch.zeros_like(out))
    for block in net.blocks:
        assert not block.ada.weight.any() and not block.cross.proj.weight.any()


def test_time_and_class_conditioning():
    net = randomise(tiny(in_channels=1, num_classes=3))
    x = rand(1, 1, 8, 8).expand(4, -1, -1, -1)
    for time in [torch.tensor([0.0, 0.3, 0.31, 1.0]), torch.tensor([0, 500, 501, 999]),
                 torch.log(torch.tensor([0.002, 1.0, 1.05, 80.0], dtype=torch.float64)) / 4]:
        out = net(x, time, torch.zeros(4, dtype=torch.long))
        assert torch.isfinite(out).all() and (out[1] - out[2]).abs().max() > 1e-6
    t = torch.full((4,), 0.5, dtype=torch.float64)
    out = net(x, t, torch.tensor([0, 1, 3, -1]))
    assert (out[0] - out[1]).abs().max() > 1e-6 and torch.equal(out[2], out[3])
    assert torch.allclose(net(x, t), out[2:3].expand(4, -1, -1, -1))
    with pytest.raises(ValueError, match="0..2"):
        net(x, t, torch.tensor([0, 1, 2, 7]))


def test_cross_attention_mask():
    net = randomise(tiny(in_channels=1, context_dim=6))
    x, t = rand(2, 1, 8, 8), torch.tensor([0.3, 0.7], dtype=torch.float64)
    ctx, mask = rand(2, 5, 6, seed=1), torch.tensor([[True, True, False, False, False], [False] * 5])
    out = net(x, t, {"context": ctx, "context_mask": mask})
    changed = torch.where(mask[..., None], ctx, rand(2, 5, 6, seed=2))
    assert torch.allclose(net(x, t, {"context": changed, "context_mask": mask}), out, atol=1e-12)
    assert not torch.allclose(net(x, t, {"context": rand(2, 5, 6, seed=2), "context_mask": mask}), out)
    assert torch.allclose(out[1], net(x[1:], t[1:])[0], atol=1e-12)      # all masked == no context


def test_concat_channels():
    net = randomise(tiny(in_channels=3, concat_channels=1))
    x, t = rand(2, 3, 8, 8), torch.tensor([0.2, 0.5], dtype=torch.float64)
    a, b = (net(x, t, {"concat": rand(2, 1, 8, 8, seed=s)}) for s in (1, 2))
    assert a.shape == x.shape and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="concat"):
        net(x, t)


def test_bad_inputs_and_config():
    net = tiny(in_channels=1, patch=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(rand(1, 1, 8, 6), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(rand(1, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="heads"):
        DiTConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="allowed: DiT-T/2"):
        dit_config("DiT-M/2")


def test_size_registry():
    """Table 1 of Peebles & Xie 2023; parameter counts for 4-channel latents,
    1000 classes and learned sigma (8 output channels) as in the paper."""
    assert {"DiT-S/2", "DiT-B/4", "DiT-L/8", "DiT-XL/2", "DiT-T/2", "DiT-T/4"} <= set(DIT_SIZES)
    cfg = dit_config("DiT-XL/2", in_channels=4)
    assert (cfg.hidden, cfg.depth, cfg.heads, cfg.patch) == (1152, 28, 16, 2)
    for size, millions in [("DiT-S/2", 33), ("DiT-B/4", 130), ("DiT-XL/2", 675)]:
        with torch.device("meta"):   # no memory, no init cost
            net = DiT.from_size(size, in_channels=4, out_channels=8, num_classes=1000)
        assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(millions, rel=0.01), size


def test_denoiser_wraps_dit():
    net = randomise(tiny(in_channels=1))
    den = Denoiser(net, get_process("edm"), "edm")
    y = rand(2, 1, 8, 8)
    sigma = torch.tensor([0.1, 20.0], dtype=torch.float64)
    out = den(y, sigma)
    assert out.shape == y.shape and torch.isfinite(out).all()
    # adaLN-Zero: the initial DiT outputs F = 0, so EDM's D = c_skip y + c_out F (Karras et al. 2022, Eq. 7)
    # is the skip path alone, c_skip = sigma_data^2 / (sigma^2 + sigma_data^2) with sigma_data = 0.5
    zero = Denoiser(tiny(in_channels=1), get_process("edm"), "edm")
    c_skip = (0.25 / (sigma**2 + 0.25)).reshape(2, 1, 1, 1)
    torch.testing.assert_close(zero(y, sigma), c_skip * y, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, c_skip * y)  # the randomised network adds its own part


@pytest.mark.slow  # trains
def test_tiny_overfit():
    torch.manual_seed(0)
    net = DiT(DiTConfig(**(TINY | dict(in_channels=1, num_classes=4, hidden=64))))
    g = torch.Generator().manual_seed(0)
    x0 = torch.sign(torch.randn(4, 1, 8, 8, generator=g))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7])
    a, s = torch.cos(t * 1.5)[:, None, None, None], torch.sin(t * 1.5)[:, None, None, None]
    x = a * x0 + s * torch.randn(4, 1, 8, 8, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = (net(x, t, torch.arange(4)) - x0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], losses[::8]


def test_gradients_reach_every_parameter():
    """adaLN-Zero does not block learning: after a few steps every parameter has a gradient."""
    net = tiny(in_channels=1, num_classes=3, context_dim=4, concat_channels=1)
    x, t = rand(2, 1, 8, 8), torch.tensor([0.3, 0.6], dtype=torch.float64)
    cond = {"labels": torch.tensor([0, 2]), "context": rand(2, 3, 4), "concat": rand(2, 1, 8, 8, seed=3)}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (net(x, t, cond) - x).square().mean().backward()
        opt.step()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, dead
