import math

import pytest
import torch

from denoisekit._utils import seeded_generators
from denoisekit.data.degrade import (BT601, augmentation_levels, downsample, grayscale, inpaint_masks,
                                     noise_augment, upsample)


def rand_images(b=4, c=3, h=8, w=8, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_grayscale_is_bt601_luma():
    x = rand_images()
    y = grayscale(x)
    assert y.shape == (4, 1, 8, 8)
    manual = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(y[:, 0], manual)
    assert math.isclose(sum(BT601), 1.0)  # so [-1, 1] maps into [-1, 1]
    assert y.min() >= -1 and y.max() <= 1


def test_grayscale_of_grey_image_is_itself():
    g = rand_images(c=1)
    torch.testing.assert_close(grayscale(g.expand(-1, 3, -1, -1)), g)  # R = G = B
    assert grayscale(g) is g  # one channel: already grey
    with pytest.raises(ValueError, match="1 or 3 channels"):
        grayscale(rand_images(c=2))


def test_downsample_is_block_mean():
    const = torch.full((2, 3, 8, 8), 0.25, dtype=torch.float64)
    torch.testing.assert_close(downsample(const, 4), torch.full((2, 3, 2, 2), 0.25, dtype=torch.float64))
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert downsample(x, 1) is x
    with pytest.raises(ValueError, match="divisible by 3"):
        downsample(x, 3)
    with pytest.raises(ValueError, match="integer >= 1"):
        downsample(x, 0)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_upsample_constant_and_shape(mode):
    const = torch.full((2, 1, 4, 4), -0.5, dtype=torch.float64)
    torch.testing.assert_close(upsample(const, 2, mode), torch.full((2, 1, 8, 8), -0.5, dtype=torch.float64))
    # both reproduce a linear ramp, so area-downsampling after upsampling gives it back away from the
    # border (where the edge is replicated; bicubic's taps reach two pixels out)
    ramp = torch.linspace(-1, 1, 8, dtype=torch.float64).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    back = downsample(upsample(ramp, 2, mode), 2)
    torch.testing.assert_close(back[..., 2:-2], ramp[..., 2:-2])
    with pytest.raises(ValueError, match="upsampling"):
        upsample(const, 2, "nearest")


@pytest.mark.parametrize("kind", ["rect", "brush", "center", "mixed"])
@pytest.mark.parametrize("size,coverage", [((32, 32), (0.2, 0.4)), ((8, 8), (0.1, 0.5)), ((16, 24), (0.5, 0.5))])
def test_mask_coverage_in_range(kind, size, coverage):
    n = 24
    m = inpaint_masks(n, size, seeded_generators(0, n), kind=kind, coverage=coverage)
    assert m.shape == (n, 1, *size) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    frac = m.flatten(1).mean(1)
    assert (frac >= coverage[0] - 1e-9).all() and (frac <= coverage[1] + 1e-9).all(), frac
    assert len(set(map(tuple, m.flatten(1).tolist()))) > n // 2 or kind == "center"  # random shapes differ


def test_center_mask_covers_the_centre():
    m = inpaint_masks(4, (16, 16), seeded_generators(0, 4), kind="center", coverage=(0.25, 0.25))
    assert (m[:, 0, 6:10, 6:10] == 1).all() and (m[:, 0, 0] == 0).all()
    torch.testing.assert_close(m.flatten(1).mean(1), torch.full((4,), 0.25))


@pytest.mark.parametrize("kind", ["rect", "brush", "mixed"])
def test_masks_are_per_sample_and_batch_independent(kind):
    full = inpaint_masks(6, (16, 16), seeded_generators(10, 6), kind=kind)
    alone = torch.cat([inpaint_masks(1, (16, 16), seeded_generators(10 + i, 1), kind=kind) for i in range(6)])
    torch.testing.assert_close(full, alone)
    # reordering the batch reorders the masks
    gens = seeded_generators(10, 6)
    torch.testing.assert_close(inpaint_masks(6, (16, 16), gens[::-1], kind=kind), full.flip(0))
    # one draw from each generator, whatever the mask: the stream after it is aligned
    gens = seeded_generators(10, 6)
    inpaint_masks(6, (16, 16), gens, kind=kind)
    after = torch.stack([torch.rand((), generator=g) for g in gens])
    ref = seeded_generators(10, 6)
    for g in ref:
        torch.randint(0, 2**62, (1,), generator=g)
    torch.testing.assert_close(after, torch.stack([torch.rand((), generator=g) for g in ref]))


def test_mask_options_checked():
    with pytest.raises(ValueError, match="allowed: brush, center, mixed, rect"):
        inpaint_masks(2, (8, 8), kind="circle")
    for bad in [(0.5, 0.2), (0.0, 0.0), (-0.1, 0.5), (0.2, 1.5), (0.1,)]:
        with pytest.raises(ValueError, match="coverage"):
            inpaint_masks(2, (8, 8), coverage=bad)
    with pytest.raises(ValueError, match="no whole number of pixels of a 4x4"):
        inpaint_masks(2, (4, 4), coverage=(0.3, 0.31))  # 4.8 .. 4.96 pixels
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        inpaint_masks(2, (8, 8), seeded_generators(0, 3))
    one = inpaint_masks(3, (8, 8), torch.Generator().manual_seed(1))  # a single generator is reproducible
    torch.testing.assert_close(one, inpaint_masks(3, (8, 8), torch.Generator().manual_seed(1)))


def test_noise_augmentation():
    x = torch.zeros(3, 1, 64, 64, dtype=torch.float64)
    assert noise_augment(x, 0.0) is x
    level = torch.tensor([0.0, 0.1, 0.5])
    y = noise_augment(x, level, seeded_generators(0, 3))
    std = (y - x).flatten(1).std(1)
    assert std[0] == 0 and abs(std[1] - 0.1) < 0.01 and abs(std[2] - 0.5) < 0.05
    # per-sample: sample 2 alone is the same as in the batch
    torch.testing.assert_close(noise_augment(x[2:], level[2:], seeded_generators(2, 1)), y[2:])
    with pytest.raises(ValueError, match=">= 0"):
        noise_augment(x, -0.1)


def test_augmentation_levels_uniform_and_per_sample():
    s = augmentation_levels(seeded_generators(0, 2000), 2000, 0.2)
    assert s.shape == (2000,) and s.min() >= 0 and s.max() <= 0.2
    assert abs(s.mean().item() - 0.1) < 0.005 and abs(s.std().item() - 0.2 / math.sqrt(12)) < 0.005
    torch.testing.assert_close(augmentation_levels(seeded_generators(5, 2), 2, 0.2), s[5:7])
    assert augmentation_levels(torch.Generator().manual_seed(0), 4, 0.0).eq(0).all()
    with pytest.raises(ValueError, match="aug_max"):
        augmentation_levels(None, 2, -1.0)
