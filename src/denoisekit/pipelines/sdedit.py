"""SDEdit / img2img (Meng et al. 2022): noise a user's image or sketch part of the way, then sample back.

``strength`` in ``[0, 1]`` is the fraction of the sampling grid that is run (the img2img convention of
diffusers, made continuous): the start level is the grid's positive levels interpolated in ``log sigma`` at
fractional index ``(1 - strength) (N - 1)``; 1 starts at the top (unconditional sampling, the prior's own
noise) and 0 returns the input unchanged. The image is noised to ``y = x + sigma_start eps`` with each
sample's generator, then :func:`~denoisekit.generation.generate` runs the truncated grid (Sec. 3 of the paper)
with any sampler, condition and guidance. A latent run edits the autoencoder's latent of the image and
decodes the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._utils import GeneratorLike, randn_like, seeded_generators
from ..generation import Guidance, LoadedModel, generate
from ..generation.generate import sampling_grid


def check_strength(strength: float) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0 or math.isnan(s):
        raise ValueError(f"strength must be in [0, 1] (0: the input, 1: a new sample), got {strength}")
    return s


def start_sigma(grid: Tensor, strength: float) -> float:
    """The VE level SDEdit starts from on ``grid`` (decreasing, ending in 0) at ``strength`` in ``(0, 1]``."""
    levels = [float(v) for v in grid if float(v) > 0]
    pos = (1 - check_strength(strength)) * (len(levels) - 1)
    i = min(math.floor(pos), len(levels) - 2) if len(levels) > 1 else 0
    if len(levels) == 1:
        return levels[0]
    frac = pos - i
    return math.exp((1 - frac) * math.log(levels[i]) + frac * math.log(levels[i + 1]))


def sdedit(model: LoadedModel, images: Tensor, strength: float, *, cond: Any = None, sampler: str | None = None,
           nfe: int | None = None, schedule: str | None = None, guidance: Guidance | None = None,
           generators: GeneratorLike = None, seed: int = 0, sampler_options: Mapping[str, Any] | None = None,
           batch_size: int = 256) -> Tensor:
    """``(B, C, H, W)`` edits of ``images`` (in ``[-1, 1]``, the run's image size) at ``strength``
    (module docstring); ``cond`` and ``guidance`` as :func:`~denoisekit.generation.generate`."""
    s = check_strength(strength)
    n = len(images)
    gens = seeded_generators(seed, n) if generators is None else generators
    if s == 0:
        return images.clone()
    kwargs = {"sampler": sampler, "nfe": nfe, "schedule": schedule, "guidance": guidance, "generators": gens,
              "sampler_options": sampler_options, "batch_size": batch_size}
    if s == 1:
        return generate(model, n, cond, **kwargs)
    if model.decoder is not None:
        with torch.no_grad():
            z = model.decoder.encode_latents(images.to(model.device)).to(images)
    else:
        z = images
    if tuple(z.shape[1:]) != model.image_shape:
        what = model.image_shape if model.decoder is None else f"images its autoencoder encodes to {model.image_shape}"
        raise ValueError(f"images are {tuple(images.shape[1:])} (C, H, W); the model edits {what}")
    d = model.defaults
    grid = sampling_grid(model, sampler=sampler or d.sampler, nfe=nfe if nfe is not None else d.nfe,
                         schedule=schedule or d.schedule, options=sampler_options)
    sigma = start_sigma(grid, s)
    x_init = z + sigma * randn_like(z, gens)
    return generate(model, n, cond, x_init=x_init, sigma_start=sigma, **kwargs)
