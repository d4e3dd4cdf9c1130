"""Image-to-image sampling (Palette, Saharia et al. 2022) and super-resolution cascades (Ho et al. 2021).

``restore`` samples ``p(x | source)`` from a model trained with an
:class:`~denoisekit.train.image_condition.ImageConditioner`; ``cascade`` runs a base model and then
super-resolution stages, each conditioned on the previous stage's output with noise augmentation at a
fixed level (Ho et al. 2021, Sec. 4.2: the level is a per-stage sampling hyperparameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._utils import GeneratorLike
from ..prediction import Denoiser
from ..sampling import sample
from ..train.image_condition import ImageConditioner, Source


def restore(denoiser: Denoiser, conditioner: ImageConditioner, source: Source, *, sampler: str = "dpmpp_2m",
            nfe: int = 20, schedule: str = "log_snr", sigmas: Tensor | None = None, generator: GeneratorLike = None,
            aug: float | Tensor | None = None, keep_known: bool = True, dtype: torch.dtype = torch.float32,
            **options: Any) -> Tensor:
    """``(B, C, H, W)`` images in ``[-1, 1]`` sampled given ``source`` (grey, low-res, or ``(image, mask)``).

    Palette's sampler is the ordinary reverse process with the source concatenated at every step
    (Saharia et al. 2022, Sec. 2). ``aug`` is the super-resolution input's noise level (default
    ``aug_sample``); ``keep_known`` pastes the known pixels back into an inpainting result. The
    generator (or per-sample list) draws the augmentation noise first, then the sampler's noise.
    """
    cond = conditioner.from_source(source, generator, aug)
    concat = cond["concat"]
    x = sample(denoiser, (concat.shape[0], *conditioner.image_shape), sampler=sampler, nfe=nfe, schedule=schedule,
               sigmas=sigmas, cond=cond, generator=generator, device=concat.device, dtype=dtype, **options)
    x = x.clamp(-1, 1)
    if conditioner.task == "inpaint" and keep_known:
        image, mask = conditioner.check_source(source)
        x = mask.to(x) * x + (1 - mask.to(x)) * image.to(x)
    return x


def cascade(base_denoiser: Denoiser, base_cond: Any, sr_stages: Sequence[tuple[Denoiser, ImageConditioner]],
            n: int, *, sampler: str = "dpmpp_2m", nfe: int | Sequence[int] = 20, schedule: str = "log_snr",
            generator: GeneratorLike = None, aug: float | Sequence[float | None] | None = None,
            dtype: torch.dtype = torch.float32, device: Any = None, **options: Any) -> list[Tensor]:
    """Cascaded sampling (Ho et al. 2021, Sec. 3): ``n`` base samples of the first stage's
    ``source_shape``, then each super-resolution stage on the previous output. Returns every stage's
    images, base first. ``nfe`` and ``aug`` (the augmentation level; ``None`` = the stage's
    ``aug_sample``) may be given per stage (``nfe``: base first, then one per SR stage)."""
    if not sr_stages:
        raise ValueError("cascade needs at least one super-resolution stage (for one model, use sample())")
    for i, (_, cond) in enumerate(sr_stages):
        if cond.task != "super_resolution":
            raise ValueError(f"cascade stage {i + 1} must be a super_resolution conditioner, got {cond.task!r}")
    nfes = [nfe] * (len(sr_stages) + 1) if isinstance(nfe, int) else list(nfe)
    augs = list(aug) if isinstance(aug, Sequence) else [aug] * len(sr_stages)
    if len(nfes) != len(sr_stages) + 1 or len(augs) != len(sr_stages):
        raise ValueError(f"{len(sr_stages)} SR stages need {len(sr_stages) + 1} nfe values and {len(sr_stages)} "
                         f"aug levels, got {len(nfes)} and {len(augs)}")
    x = sample(base_denoiser, (n, *sr_stages[0][1].source_shape), sampler=sampler, nfe=nfes[0], schedule=schedule,
               cond=base_cond, generator=generator, device=device, dtype=dtype, **options).clamp(-1, 1)
    outputs = [x]
    for (den, cond), stage_nfe, stage_aug in zip(sr_stages, nfes[1:], augs):
        x = restore(den, cond, x, sampler=sampler, nfe=stage_nfe, schedule=schedule, generator=generator,
                    aug=stage_aug, dtype=dtype, **options)
        outputs.append(x)
    return outputs
