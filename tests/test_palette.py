import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit._utils import seeded_generators
from denoisekit.data import DigitsConfig, DigitsDataset
from denoisekit.data.degrade import upsample
from denoisekit.losses import DiffusionLoss
from denoisekit.models.unet import UNet
from denoisekit.pipelines import cascade, restore
from denoisekit.conditioning import ImageConditionConfig, ImageConditioner


@pytest.fixture(scope="module")
def sr_model():
    """A tiny U-Net trained for 150 steps (~5 s) as a x2 super-resolution stage on 8x8 digits (4x4 inputs)."""
    torch.manual_seed(0)
    train = DigitsDataset(DigitsConfig(size=8, split="train")).images
    cc = ImageConditioner(ImageConditionConfig("super_resolution", factor=2, aug_max=0.2), (1, 8, 8))
    net = UNet(in_channels=1, concat_channels=cc.concat_channels, channels=16, channel_mult=(1, 2),
               num_res_blocks=1, attention_levels=(), mid_attention=False, norm_groups=8)
    den = Denoiser(net, get_process("vp_cosine"), "v")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g, batch = torch.Generator().manual_seed(0), 32
    for step in range(150):
        x0 = train[torch.randint(0, len(train), (batch,), generator=g)]
        gens = seeded_generators(1000 + step * batch, batch)  # the conditioner's draws, then the loss's
        loss = DiffusionLoss()(den, x0, cc.training(x0, gens), gens).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return den, cc


@pytest.fixture(scope="module")
def held_out_digits():
    return DigitsDataset(DigitsConfig(size=8, split="test")).images[:32]


@pytest.mark.slow  # trains (the module's super-resolution model)
@torch.no_grad()
def test_restore_follows_its_input(sr_model, held_out_digits):
    den, cc = sr_model
    lr = cc.degrade(held_out_digits)
    out = restore(den, cc, lr, nfe=10, generator=seeded_generators(1, len(lr)))
    assert out.shape == held_out_digits.shape and out.abs().max() <= 1
    own = cc.consistency(out, lr).mean()
    # baseline: the same model given other inputs samples digits, but not these (what an
    # unconditional model's samples would score)
    other = restore(den, cc, lr.roll(1, 0), nfe=10, generator=seeded_generators(1, len(lr)))
    baseline = cc.consistency(other, lr).mean()
    # measured: own 0.022, baseline 0.28 (bicubic upsampling of the input itself: 0.016)
    assert own < 0.05 and own < baseline / 5, (own, baseline)
    # closer to the truth than a sample for another input; about as close as bicubic (measured 0.157 vs 0.157)
    mse = (out - held_out_digits).pow(2).mean()
    assert mse < 0.5 * (other - held_out_digits).pow(2).mean()
    assert mse < 1.5 * (upsample(lr, 2).clamp(-1, 1) - held_out_digits).pow(2).mean()


@pytest.mark.slow  # trains (the module's super-resolution model)
@torch.no_grad()
def test_restore_is_per_sample_and_uses_aug(sr_model, held_out_digits):
    den, cc = sr_model
    lr = cc.degrade(held_out_digits[:6])
    full = restore(den, cc, lr, nfe=4, generator=seeded_generators(5, 6))
    part = restore(den, cc, lr[3:], nfe=4, generator=seeded_generators(8, 3))
    torch.testing.assert_close(part, full[3:], atol=1e-5, rtol=0)
    other_aug = restore(den, cc, lr, nfe=4, generator=seeded_generators(5, 6), aug=0.15)
    assert not torch.allclose(other_aug, full)
    with pytest.raises(ValueError, match=r"expects a \(B, 1, 4, 4\) low-resolution input, got \(6, 1, 8, 8\)"):
        restore(den, cc, held_out_digits[:6], nfe=4)


def test_inpaint_keeps_known_pixels():
    cc = ImageConditioner(ImageConditionConfig("inpaint", mask="brush"), (1, 8, 8))
    seen = {}

    def net(x, t, cond):
        seen["concat"] = cond["concat"]
        return torch.zeros_like(x)  # x0 = 0 everywhere

    den = Denoiser(net, get_process("vp_cosine"), "x0")
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    image, mask = cc.degrade(x0, seeded_generators(0, 4))
    out = restore(den, cc, (x0, mask), nfe=3, generator=seeded_generators(0, 4))
    torch.testing.assert_close(out, x0 * (1 - mask))  # known pixels pasted, the hole is the model's 0
    torch.testing.assert_close(seen["concat"], torch.cat([image, mask], 1))
    raw = restore(den, cc, (x0, mask), nfe=3, keep_known=False)
    assert raw.abs().max() < 1e-6
    with pytest.raises(ValueError, match="aug"):
        restore(den, cc, (x0, mask), nfe=3, aug=0.1)


@pytest.mark.slow  # trains (the module's super-resolution model)
@torch.no_grad()
def test_cascade(sr_model, held_out_digits):
    den, cc = sr_model
    targets = cc.degrade(held_out_digits[:8])  # the base "model" makes exactly these 4x4 images

    def base_net(x, t, cond=None):
        return targets[: x.shape[0]]

    base = Denoiser(base_net, get_process("vp_cosine"), "x0")
    outs = cascade(base, None, [(den, cc)], 8, nfe=[3, 10], aug=0.05, generator=seeded_generators(0, 8))
    assert [o.shape for o in outs] == [(8, 1, 4, 4), (8, 1, 8, 8)]
    torch.testing.assert_close(outs[0], targets.clamp(-1, 1), atol=1e-5, rtol=0)
    assert cc.consistency(outs[1], outs[0]).mean() < 0.05  # the SR stage follows the base output
    again = cascade(base, None, [(den, cc)], 8, nfe=[3, 10], aug=0.05, generator=seeded_generators(0, 8))
    torch.testing.assert_close(again[1], outs[1])
    with pytest.raises(ValueError, match="2 nfe values and 1 aug"):
        cascade(base, None, [(den, cc)], 8, nfe=[3, 4, 5])
    with pytest.raises(ValueError, match="at least one"):
        cascade(base, None, [], 8)
    colour = ImageConditioner(ImageConditionConfig("colorize"), (3, 8, 8))
    with pytest.raises(ValueError, match="must be a super_resolution conditioner"):
        cascade(base, None, [(den, colour)], 8)
    # a second stage whose input does not match the first stage's output: a clear error
    wide = ImageConditioner(ImageConditionConfig("super_resolution", factor=2), (3, 16, 16))
    with pytest.raises(ValueError, match=r"expects a \(B, 3, 8, 8\) low-resolution input, got \(2, 1, 8, 8\)"):
        cascade(base, None, [(den, cc), (den, wide)], 2, nfe=3)
