import re

import pytest
import torch

from denoisekit._utils import seeded_generators
from denoisekit.data.degrade import downsample, grayscale
from denoisekit.models.unet import UNet
from denoisekit.conditioning import ImageConditionConfig, ImageConditioner


def images(b=4, c=3, h=16, w=16, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def make(task, shape=(3, 16, 16), **kw):
    return ImageConditioner(ImageConditionConfig(task, **kw), shape)


def test_config_checks():
    with pytest.raises(ValueError, match="allowed: colorize, inpaint, super_resolution"):
        ImageConditionConfig("deblur")
    with pytest.raises(ValueError, match="allowed: bicubic, bilinear"):
        ImageConditionConfig("super_resolution", upsample="nearest")
    with pytest.raises(ValueError, match="allowed: brush, center, mixed, rect"):
        ImageConditionConfig("inpaint", mask="circle")
    with pytest.raises(ValueError, match="factor"):
        ImageConditionConfig("super_resolution", factor=0)
    with pytest.raises(ValueError, match="aug_max"):
        ImageConditionConfig("super_resolution", aug_max=-0.1)
    with pytest.raises(ValueError, match="aug_sample"):
        ImageConditionConfig("super_resolution", aug_sample=float("nan"))
    with pytest.raises(ValueError, match="coverage"):
        ImageConditionConfig("inpaint", mask_coverage=(0.6, 0.2))
    cfg = ImageConditionConfig("inpaint", mask_coverage=[0.2, 0.3])  # from YAML: stored as a tuple
    assert cfg.mask_coverage == (0.2, 0.3) and hash(cfg)
    with pytest.raises(ValueError, match="colorize needs RGB"):
        make("colorize", (1, 8, 8))
    with pytest.raises(ValueError, match="factor 4 needs H and W divisible"):
        make("super_resolution", (3, 8, 10), factor=4)
    with pytest.raises(ValueError, match="no whole number of pixels"):
        make("inpaint", (1, 4, 4), mask_coverage=(0.3, 0.31))


@pytest.mark.parametrize("task,channels,source", [
    ("colorize", 1, (1, 16, 16)),
    ("super_resolution", 4, (3, 8, 8)),
    ("inpaint", 4, (3, 16, 16)),
])
def test_channels_and_shapes(task, channels, source):
    cc = make(task)
    assert cc.concat_channels == channels and cc.source_shape == source
    x0, gens = images(), seeded_generators(0, 4)
    src = cc.degrade(x0, gens)
    image = src[0] if task == "inpaint" else src
    assert image.shape == (4, *source)
    cond = cc.training(x0, seeded_generators(0, 4))
    assert set(cond) == {"concat"} and cond["concat"].shape == (4, channels, 16, 16)
    assert cc.from_source(src, seeded_generators(0, 4))["concat"].shape == (4, channels, 16, 16)
    # the network takes it
    net = UNet(in_channels=3, concat_channels=cc.concat_channels, channels=8, channel_mult=(1, 2),
               num_res_blocks=1, attention_levels=(), mid_attention=False, norm_groups=4)
    assert net(x0, torch.rand(4), cond).shape == x0.shape


def test_degradations_are_the_documented_ones():
    x0 = images()
    torch.testing.assert_close(make("colorize").training(x0, seeded_generators(0, 4))["concat"], grayscale(x0))
    cc = make("super_resolution", factor=4, aug_max=0.0)
    lr = cc.degrade(x0)
    torch.testing.assert_close(lr, downsample(x0, 4))
    cond = cc.training(x0, seeded_generators(0, 4))["concat"]
    torch.testing.assert_close(cond, cc.from_source(lr, aug=0.0)["concat"])  # aug 0: no noise either way
    assert (cond[:, 3] == 0).all()
    cc = make("inpaint", (3, 16, 16), mask="rect")
    image, mask = cc.degrade(x0, seeded_generators(3, 4))
    assert ((image == 0) | (mask == 0)).all() and torch.equal(image * (1 - mask), x0 * (1 - mask))
    cond = cc.training(x0, seeded_generators(3, 4))["concat"]
    torch.testing.assert_close(cond, torch.cat([image, mask], 1))
    # a user's image with anything in the hole gives the same input: the hole is zeroed
    torch.testing.assert_close(cc.from_source((x0, mask))["concat"], cond)


def test_super_resolution_augmentation_levels():
    cc = make("super_resolution", aug_max=0.3, aug_sample=0.05)
    x0 = images(b=8)
    cond = cc.training(x0, seeded_generators(0, 8))["concat"]
    level = cond[:, 3]
    assert (level == level[:, :1, :1]).all()  # a constant channel per sample
    s = level[:, 0, 0]
    assert (s >= 0).all() and (s <= 0.3).all() and s.unique().numel() == 8
    at_sampling = cc.from_source(cc.degrade(x0), seeded_generators(0, 8))["concat"][:, 3]
    assert torch.equal(at_sampling, torch.full_like(level, 0.05))
    per_sample = cc.from_source(cc.degrade(x0), aug=torch.linspace(0, 0.7, 8))["concat"][:, 3, 0, 0]
    torch.testing.assert_close(per_sample, torch.linspace(0, 0.7, 8))
    # the noise really is there, at about the level: (upsampled) input minus clean low-res
    big = cc.from_source(cc.degrade(x0), aug=1.0)["concat"][:, :3]
    clean = cc.from_source(cc.degrade(x0), aug=0.0)["concat"][:, :3]
    assert 0.3 < (big - clean).std() < 1.0
    with pytest.raises(ValueError, match=">= 0"):
        cc.from_source(cc.degrade(x0), aug=-0.1)


@pytest.mark.parametrize("task", ["super_resolution", "inpaint"])
def test_training_is_per_sample_and_resumable(task):
    cc = make(task, aug_max=0.5)
    x0 = images(b=6)
    full = cc.training(x0, seeded_generators(100, 6))["concat"]
    part = cc.training(x0[2:4], seeded_generators(102, 2))["concat"]
    torch.testing.assert_close(part, full[2:4])  # batch-size independent
    torch.testing.assert_close(cc.training(x0, seeded_generators(100, 6))["concat"], full)  # reproducible


def test_from_source_errors_name_expected_and_got():
    cc = make("super_resolution", factor=2)
    msg = "super_resolution with factor 2 on 16x16 images expects a (B, 3, 8, 8) low-resolution input, got (2, 1, 8, 8)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        cc.from_source(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=re.escape("got (2, 3, 16, 16)")):
        cc.from_source(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=re.escape("got (3, 8, 8)")):
        cc.from_source(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"values in \[-1, 1\], got \[0, 255\]"):
        cc.from_source(torch.full((2, 3, 8, 8), 255.0).index_fill_(0, torch.tensor([0]), 0.0))
    with pytest.raises(ValueError, match="NaN"):
        cc.from_source(torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="float"):
        cc.from_source(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=re.escape("colorize on 16x16 images expects a (B, 1, 16, 16) grey input")):
        make("colorize").from_source(images())
    with pytest.raises(ValueError, match="takes none"):
        make("colorize").from_source(grayscale(images()), aug=0.1)
    inp = make("inpaint")
    with pytest.raises(ValueError, match="an \\(image, mask\\) pair"):
        inp.from_source(images())
    with pytest.raises(ValueError, match=re.escape("expects a (4, 1, 16, 16) mask (1 = missing), got (4, 16, 16)")):
        inp.from_source((images(), torch.zeros(4, 16, 16)))
    with pytest.raises(ValueError, match="0 \\(known\\) or 1 \\(missing\\)"):
        inp.from_source((images(), torch.full((4, 1, 16, 16), 0.5)))
    bool_mask = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    assert inp.from_source((images(), bool_mask))["concat"][:, 3].eq(0).all()


def test_consistency():
    x0 = images()
    for task in ["colorize", "super_resolution", "inpaint"]:
        cc = make(task)
        src = cc.degrade(x0, seeded_generators(0, 4))
        err = cc.consistency(x0, src)
        assert err.shape == (4,) and err.abs().max() < 1e-12  # the clean image agrees with its degradation
        assert (cc.consistency(images(seed=1), src) > 0.05).all()  # another image does not
    cc = make("inpaint")
    image, mask = cc.degrade(x0, seeded_generators(0, 4))
    changed = x0 + mask * 0.7  # only missing pixels differ: still consistent
    assert cc.consistency(changed.clamp(-1, 1), (image, mask)).abs().max() < 1e-12
    # colorize: any colouring with the right luma is consistent
    cc = make("colorize")
    shift = torch.tensor([0.1, -0.1, 0.1 * (0.587 - 0.299) / 0.114]).view(1, 3, 1, 1) * 0.5
    recoloured = x0 * 0.5 + shift
    torch.testing.assert_close(cc.consistency(recoloured, grayscale(x0 * 0.5)), torch.zeros(4), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="sample"):
        cc.consistency(x0[:, :1], grayscale(x0))
