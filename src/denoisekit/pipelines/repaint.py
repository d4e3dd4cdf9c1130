"""RePaint: inpainting and outpainting with an unconditional model (Lugmayr et al. 2022).

Every reverse step samples the unknown region from the model and the known region from the forward
process of the given image, ``y = x_known + sigma eps`` (the VE frame: the same for every process), and
pastes them together (their Algorithm 1); the resampling schedule goes back up ``jump_length`` levels
``jump_n_sample - 1`` times at every ``jump_length``-th level, adding fresh noise, so the two regions
harmonise (Sec. 4.2, their ``get_schedule_jump``). The reverse step is DDPM ancestral sampling (DDIM with
``eta = 1``): mean ``x0 + (s'^2 / s^2)(y - x0)``, std ``s' sqrt(1 - s'^2 / s^2)``.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from .._utils import GeneratorLike, randn, randn_like
from ..denoiser import DenoiserFn
from ..schedules import check_sigmas


def repaint_schedule(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """Positions ``0 .. steps`` on a grid of ``steps`` steps (0 = the top level, ``steps`` = sigma 0) in the order
    RePaint visits them: down one at a time, and at positions ``steps, steps - j, steps - 2j, ...`` (above ``j``)
    back up ``j = jump_length`` positions ``jump_n_sample - 1`` times (RePaint's ``get_schedule_jump``)."""
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"steps, jump_length and jump_n_sample must be >= 1, got {steps}, {jump_length}, "
                         f"{jump_n_sample}")
    jumps = {p: jump_n_sample - 1 for p in range(steps, jump_length, -jump_length)}
    p, path = 0, [0]
    while p < steps or jumps.get(p, 0) > 0:
        if jumps.get(p, 0) > 0:
            jumps[p] -= 1
            for _ in range(jump_length):
                p -= 1
                path.append(p)
        p += 1
        path.append(p)
    return path


def repaint(denoiser: DenoiserFn, known: Tensor, mask: Tensor, sigmas: Tensor, *, jump_length: int = 10,
            jump_n_sample: int = 10, cond: Any = None, generator: GeneratorLike = None,
            prior_std: float | None = None) -> Tensor:
    """``(B, C, H, W)`` inpainted images: ``known`` (values in the hole are ignored) where ``mask`` (1 = missing,
    ``(B or 1, 1, H, W)``) is 0, exactly; the hole from the model (module docstring). ``sigmas`` is the
    decreasing grid ending in 0; NFE = the down moves of :func:`repaint_schedule`."""
    grid = check_sigmas(sigmas).tolist()
    if grid[-1] != 0:
        raise ValueError("RePaint's grid must end in 0")
    steps = len(grid) - 1
    m = (mask > 0.5).to(known)
    if not bool((m.flatten(1).sum(1) > 0).all()) or not bool((m.flatten(1).mean(1) < 1).all()):
        raise ValueError("each RePaint mask needs missing and known pixels")
    top = prior_std if prior_std is not None else grid[0]
    y = randn(known.shape, generator, device=known.device, dtype=known.dtype) * top
    path = repaint_schedule(steps, jump_length, jump_n_sample)
    for a, b in pairwise(path):
        s, t = grid[a], grid[b]
        if b > a:  # reverse step s -> t
            x0 = denoiser(y, torch.full((len(y),), s, dtype=y.dtype, device=y.device), cond)
            ratio = (t / s) ** 2
            unknown = x0 + ratio * (y - x0)
            if t > 0:
                unknown = unknown + t * math.sqrt(1 - ratio) * randn_like(y, generator)
                seen = known + t * randn_like(y, generator)
            else:
                seen = known
            y = m * unknown + (1 - m) * seen
        else:  # jump back up t > s: q(y_t | y_s) in the VE frame
            y = y + math.sqrt(t**2 - s**2) * randn_like(y, generator)
    return m * y + (1 - m) * known


def repaint_nfe(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """Denoiser evaluations of :func:`repaint` on a grid of ``steps`` steps."""
    path = repaint_schedule(steps, jump_length, jump_n_sample)
    return sum(b > a for a, b in pairwise(path))


def extend_canvas(image: Tensor, size: tuple[int, int], offset: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Outpainting: ``image`` ``(B, C, h, w)`` placed on an ``size = (H, W)`` canvas at ``offset`` (top, left;
    default centred); returns ``(canvas, mask)`` with mask 1 on the new area, for :func:`repaint`."""
    b, c, h, w = image.shape
    big_h, big_w = size
    top, left = offset if offset is not None else ((big_h - h) // 2, (big_w - w) // 2)
    if not (0 <= top and 0 <= left and top + h <= big_h and left + w <= big_w) or (h, w) == (big_h, big_w):
        raise ValueError(f"a {w}x{h} image at (top {top}, left {left}) must lie inside a larger {big_w}x{big_h} canvas")
    canvas = image.new_zeros(b, c, big_h, big_w)
    mask = image.new_ones(b, 1, big_h, big_w)
    canvas[:, :, top:top + h, left:left + w] = image
    mask[:, :, top:top + h, left:left + w] = 0
    return canvas, mask
