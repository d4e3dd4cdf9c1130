"""Pure image degradations for image-conditioned diffusion: grey, low resolution, holes, noise.

Images are float ``(B, C, H, W)`` in ``[-1, 1]``. These are the corruptions Palette (Saharia et al.
2022, Sec. 4) learns to invert and the conditioning-noise augmentation of Cascaded Diffusion Models
(Ho et al. 2021, Sec. 4.2):

=====================  =======================================================================
function               what
=====================  =======================================================================
grayscale              ITU-R BT.601 luma ``Y' = 0.299 R' + 0.587 G' + 0.114 B'`` -> 1 channel
downsample             area (box) average over ``factor x factor`` blocks
upsample               bicubic (default, as SR3/Palette) or bilinear, ``align_corners=False``
inpaint_masks          per-sample masks (1 = missing): rectangles, free-form brush strokes,
                       a centre box, or a mix; coverage kept inside a given range
noise_augment          ``x + s * eps`` with ``s`` per sample (CDM's Gaussian augmentation)
augmentation_levels    ``s ~ U[0, aug_max]`` per sample (training); sampling fixes ``s``
=====================  =======================================================================

Randomness comes from generators: with a list of per-sample generators, sample ``i`` depends only on
generator ``i`` (results do not change with the batch around it, and resume exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import GeneratorLike, as_batch, check_choice, randn_like

Upsampling = Literal["bicubic", "bilinear"]
MaskKind = Literal["rect", "brush", "center", "mixed"]
UPSAMPLINGS = ("bicubic", "bilinear")
MASK_KINDS = ("rect", "brush", "center", "mixed")

#: ITU-R BT.601 luma weights for (R', G', B'); they sum to 1, so [-1, 1] maps to [-1, 1].
BT601 = (0.299, 0.587, 0.114)


def _check_images(x: Tensor, what: str = "images") -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} must have shape (B, C, H, W), got {tuple(x.shape)}")


def grayscale(x: Tensor) -> Tensor:
    """``(B, 3, H, W) -> (B, 1, H, W)`` luma of ITU-R BT.601 (on the gamma-encoded values, as JPEG does);
    a one-channel image is returned unchanged."""
    _check_images(x)
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels, got {x.shape[1]}")
    w = torch.tensor(BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def downsample(x: Tensor, factor: int) -> Tensor:
    """``(B, C, H, W) -> (B, C, H/f, W/f)``: the mean over each ``f x f`` block (area resampling)."""
    _check_images(x)
    _check_factor(factor)
    h, w = x.shape[2:]
    if h % factor or w % factor:
        raise ValueError(f"downsampling by {factor} needs H and W divisible by {factor}, got {h}x{w}")
    return F.avg_pool2d(x, factor) if factor > 1 else x


def upsample(x: Tensor, factor: int, mode: Upsampling = "bicubic") -> Tensor:
    """``(B, C, h, w) -> (B, C, h f, w f)`` by bicubic (Keys, a = -0.75 as PyTorch) or bilinear
    interpolation with pixel centres aligned (``align_corners=False``). Not clamped: bicubic may
    overshoot ``[-1, 1]`` slightly, and a noise-augmented input is outside it anyway."""
    _check_images(x)
    _check_factor(factor)
    check_choice("upsampling", mode, UPSAMPLINGS)
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=float(factor), mode=mode, align_corners=False)


def _check_factor(factor: int) -> None:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")


# ----------------------------------------------------------------------------------------------
# Noise-conditioning augmentation (Ho et al. 2021, Sec. 4.2)


def per_sample_generators(generator: GeneratorLike, n: int) -> list[torch.Generator]:
    """``n`` CPU generators for building masks: child ``i`` is seeded by one draw from generator ``i`` of
    a per-sample list, or by the ``i``-th draw from a single generator (the global RNG for ``None``)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"got {len(gens)} generators for a batch of {n}")
        return [_child(g) for g in gens]
    return [_child(generator) for _ in range(n)]


def _child(g: torch.Generator | None) -> torch.Generator:
    # One int64 draw per child: the parent's stream advances by the same amount whatever is built.
    device = g.device if g is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=device))
    return torch.Generator().manual_seed(seed)


def augmentation_levels(generator: GeneratorLike, n: int, aug_max: float, *,
                        device: torch.device | str | None = None) -> Tensor:
    """``(n,)`` float32 levels ``s ~ U[0, aug_max]``, one draw from each per-sample generator."""
    if aug_max < 0:
        raise ValueError(f"aug_max must be >= 0, got {aug_max}")
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else "cpu"
        u = torch.rand(n, generator=generator, device=gdev)
    else:
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"got {len(gens)} generators for a batch of {n}")
        u = torch.stack([torch.rand((), generator=g, device=g.device).cpu() for g in gens])
    return (u.cpu() * aug_max).to(device)


def noise_augment(x: Tensor, level: Tensor | float, generator: GeneratorLike = None) -> Tensor:
    """``x + s * eps``, ``eps ~ N(0, I)``, with ``s`` a scalar or ``(B,)``: the Gaussian conditioning
    augmentation of Ho et al. 2021 (Sec. 4.2), in its additive (non variance-preserving) form."""
    _check_images(x)
    s = as_batch(level, x)
    if (s < 0).any():
        raise ValueError(f"augmentation levels must be >= 0, got {s.min().item()}")
    if (s == 0).all():
        return x
    return x + s.to(x.dtype).view(-1, 1, 1, 1) * randn_like(x, generator)


# ----------------------------------------------------------------------------------------------
# Inpainting masks (Palette, Sec. 4: box and free-form masks after Yu et al. 2019)


def inpaint_masks(n: int, size: tuple[int, int], generator: GeneratorLike = None, *, kind: MaskKind = "mixed",
                  coverage: tuple[float, float] = (0.1, 0.5)) -> Tensor:
    """``(n, 1, H, W)`` float masks, 1 = missing pixel, each covering a fraction in ``coverage``.

    Per sample a target fraction ``c ~ U[coverage]`` is drawn, then a shape of about that area:
    ``rect`` one to three random rectangles (random aspect ratio, area ``c/k`` each); ``brush`` free-form
    strokes (thick random polylines, as the free-form masks of Yu et al. 2019, Alg. 1) added until the
    area is reached; ``center`` a centred box of area ``c``; ``mixed`` one of the three uniformly.
    The pixel count is then moved into ``[ceil(lo HW), floor(hi HW)]`` by growing the hole ring by ring
    (8-neighbour dilation) or shrinking it from its border, the last ring taken partly at random.
    Sample ``i`` uses only generator ``i`` of a list (one draw from it).
    """
    check_choice("mask kind", kind, MASK_KINDS)
    h, w = size
    lo, hi = check_coverage(coverage, (h, w))
    total = h * w
    n_lo, n_hi = math.ceil(lo * total - 1e-9), math.floor(hi * total + 1e-9)
    masks = []
    for g in per_sample_generators(generator, n):
        target = lo + (hi - lo) * _uniform(g)
        which = kind if kind != "mixed" else ("rect", "brush", "center")[int(torch.randint(0, 3, (1,), generator=g))]
        if which == "rect":
            m = _rect_mask(h, w, target, g)
        elif which == "brush":
            m = _brush_mask(h, w, target, g)
        else:
            m = _center_mask(h, w, target)
        masks.append(_fit_count(m, n_lo, n_hi, g))
    return torch.stack(masks)[:, None].float()


def check_coverage(coverage: Sequence[float], size: tuple[int, int]) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 <= lo <= hi <= 1``, ``hi > 0``, and a whole pixel count between them."""
    if len(coverage) != 2:
        raise ValueError(f"mask coverage must be a (low, high) pair, got {coverage!r}")
    lo, hi = float(coverage[0]), float(coverage[1])
    if not 0.0 <= lo <= hi <= 1.0 or hi == 0.0:
        raise ValueError(f"mask coverage must satisfy 0 <= low <= high <= 1 and high > 0, got {coverage!r}")
    h, w = size
    if math.ceil(lo * h * w - 1e-9) > math.floor(hi * h * w + 1e-9):
        raise ValueError(f"mask coverage {coverage!r} contains no whole number of pixels of a {h}x{w} image")
    return lo, hi


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def _rect_mask(h: int, w: int, target: float, g: torch.Generator) -> Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    k = int(torch.randint(1, 4, (1,), generator=g))
    for _ in range(k):
        area = target * h * w / k
        aspect = math.exp(math.log(2.0) * (2 * _uniform(g) - 1))  # height / width in [1/2, 2]
        rh = min(h, max(1, round(math.sqrt(area * aspect))))
        rw = min(w, max(1, round(area / rh)))
        top = int(torch.randint(0, h - rh + 1, (1,), generator=g))
        left = int(torch.randint(0, w - rw + 1, (1,), generator=g))
        m[top:top + rh, left:left + rw] = True
    return m


def _center_mask(h: int, w: int, target: float) -> Tensor:
    rh, rw = max(1, round(h * math.sqrt(target))), max(1, round(w * math.sqrt(target)))
    m = torch.zeros(h, w, dtype=torch.bool)
    top, left = (h - rh) // 2, (w - rw) // 2
    m[top:top + rh, left:left + rw] = True
    return m


def _brush_mask(h: int, w: int, target: float, g: torch.Generator, max_strokes: int = 12) -> Tensor:
    """Strokes of Yu et al. 2019 (Alg. 1): a random start, 2-5 segments with random turns and lengths,
    a random width; rasterised as the pixels whose centre lies within width/2 of the polyline. Strokes
    are added, segment by segment, until the area reaches ``target``."""
    side = max(h, w)
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    m = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(max_strokes):
        if m.float().mean() >= target:
            break
        # >= sqrt(2)/2 px so that a diagonal stroke stays 8-connected
        radius = max(0.75, side * (0.04 + 0.08 * _uniform(g)))
        y, x = _uniform(g) * h, _uniform(g) * w
        angle = 2 * math.pi * _uniform(g)
        for _ in range(int(torch.randint(2, 6, (1,), generator=g))):
            angle += (_uniform(g) - 0.5) * math.pi  # turn by up to +-90 degrees
            length = side * (0.15 + 0.35 * _uniform(g))
            y1 = min(max(y + length * math.sin(angle), 0.0), float(h))
            x1 = min(max(x + length * math.cos(angle), 0.0), float(w))
            m |= _segment_distance(ys, xs, (y, x), (y1, x1)) <= radius
            y, x = y1, x1
            if m.float().mean() >= target:  # stop mid-stroke: little to shave off afterwards
                break
    return m


def _segment_distance(ys: Tensor, xs: Tensor, p: tuple[float, float], q: tuple[float, float]) -> Tensor:
    """Distance of each pixel centre to the segment ``p -> q`` (points as (y, x))."""
    dy, dx = q[0] - p[0], q[1] - p[1]
    norm2 = dy * dy + dx * dx
    t = ((ys - p[0]) * dy + (xs - p[1]) * dx) / norm2 if norm2 > 0 else torch.zeros_like(ys + xs)
    t = t.clamp(0, 1)
    return torch.sqrt((ys - p[0] - t * dy) ** 2 + (xs - p[1] - t * dx) ** 2)


def _dilate(m: Tensor) -> Tensor:
    return F.max_pool2d(m[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def _fit_count(m: Tensor, n_lo: int, n_hi: int, g: torch.Generator) -> Tensor:
    """Grow (dilation rings) or shrink (border rings) ``m`` until its pixel count is in ``[n_lo, n_hi]``."""
    m = m.clone()
    while (count := int(m.sum())) < n_lo:
        ring = _dilate(m) & ~m if count else ~m  # an empty mask grows from a random pixel
        m = _take(m, ring, n_lo - count if count else 1, g, add=True)
    while (count := int(m.sum())) > n_hi:
        border = m & _dilate(~m) if count < m.numel() else m
        m = _take(m, border, count - n_hi, g, add=False)
    return m


def _take(m: Tensor, candidates: Tensor, need: int, g: torch.Generator, *, add: bool) -> Tensor:
    idx = candidates.flatten().nonzero().flatten()
    if len(idx) > need:
        idx = idx[torch.randperm(len(idx), generator=g)[:need]]
    flat = m.flatten()
    flat[idx] = add
    return flat.view_as(m)
