"""Image-to-image sampling (Palette, Saharia et al. 2022) and super-resolution cascades (Ho et al. 2021).

``restore`` samples ``p(x | source)`` from a model trained with an
:class:`~denoisekit.conditioning.ImageConditioner`; ``cascade`` runs a base model and then
super-resolution stages, each conditioned on the previous stage's output with noise augmentation at a
fixed level (Ho et al. 2021, Sec. 4.2: the level is a per-stage sampling hyperparameter). Both sample
through :func:`~denoisekit.generation.generate`, from a loaded run or a bare denoiser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._utils import GeneratorLike, seeded_generators
from ..denoiser import DenoiserFn
from ..generation import Guidance, LoadedModel, SampleDefaults, generate
from ..samplers.tuning.solver import LearnedSolver
from ..conditioning import ImageConditioner, Source

#: A bare denoiser's settings in these pipelines (a loaded run brings its own).
DEFAULTS = SampleDefaults(nfe=20)
Model = LoadedModel | DenoiserFn


def as_model(model: Model, image_shape: Sequence[int]) -> LoadedModel:
    """``model`` as a :class:`~denoisekit.generation.LoadedModel` making ``image_shape`` samples."""
    if isinstance(model, LoadedModel):
        if model.image_shape != tuple(image_shape):
            raise ValueError(f"the model makes {model.image_shape} samples; this stage needs {tuple(image_shape)}")
        return model
    return LoadedModel(model, tuple(image_shape), defaults=DEFAULTS)


def _generators(generator: GeneratorLike, n: int) -> Any:
    return seeded_generators(0, n) if generator is None else generator


def restore(model: Model, conditioner: ImageConditioner, source: Source, *, sampler: str | None = None,
            nfe: int | None = None, schedule: str | None = None, sigmas: Tensor | None = None,
            solver: LearnedSolver | None = None, generator: GeneratorLike = None, aug: float | Tensor | None = None,
            keep_known: bool = True, dtype: torch.dtype = torch.float32, batch_size: int | None = None,
            **options: Any) -> Tensor:
    """``(B, C, H, W)`` images in ``[-1, 1]`` sampled given ``source`` (grey, low-res, or ``(image, mask)``).

    Palette's sampler is the ordinary reverse process with the source concatenated at every step
    (Saharia et al. 2022, Sec. 2). ``aug`` is the super-resolution input's noise level (default
    ``aug_sample``); ``keep_known`` pastes the known pixels back into an inpainting result. The
    generator (or per-sample list; default seeds ``0..B-1``) draws the augmentation noise first, then the
    sampler's noise. Sampling runs on the model's device; the result comes back on the source's.
    ``sampler``, ``nfe``, ``schedule``: default the run's (a bare denoiser: DPM-Solver++(2M),
    20 NFE, the default schedule), or a learned ``solver``; ``batch_size`` samples per call (default all);
    ``options`` go to the sampler.
    """
    m = as_model(model, conditioner.image_shape)
    n = len(source[0] if isinstance(source, tuple) else source)
    gens = _generators(generator, n)
    cond = conditioner.from_source(source, gens, aug)  # on the source's device; generate() moves it to the model's
    x = generate(m, n, cond, sampler=sampler, nfe=nfe, schedule=schedule, sigmas=sigmas, solver=solver,
                 sampler_options=options, guidance=Guidance(), generators=gens, batch_size=batch_size or n,
                 device=m.device, dtype=dtype).clamp(-1, 1).to(cond["concat"].device)
    if conditioner.task == "inpaint" and keep_known:
        image, mask = conditioner.check_source(source)
        x = mask.to(x) * x + (1 - mask.to(x)) * image.to(x)
    return x


def cascade(base_denoiser: Model, base_cond: Any, sr_stages: Sequence[tuple[Model, ImageConditioner]], n: int, *,
            sampler: str | None = None, nfe: int | Sequence[int | None] | None = None, schedule: str | None = None,
            generator: GeneratorLike = None, aug: float | Sequence[float | None] | None = None,
            dtype: torch.dtype = torch.float32, device: Any = None, **options: Any) -> list[Tensor]:
    """Cascaded sampling (Ho et al. 2021, Sec. 3): ``n`` base samples of the first stage's
    ``source_shape``, then each super-resolution stage on the previous output. Returns every stage's
    images, base first. ``nfe`` and ``aug`` (the augmentation level; ``None`` = the stage's
    ``aug_sample``) may be given per stage (``nfe``: base first, then one per SR stage). One generator per
    sample (default seeds ``0..n-1``) runs through all stages."""
    if not sr_stages:
        raise ValueError("cascade needs at least one super-resolution stage (for one model, use generate())")
    for i, (_, cond) in enumerate(sr_stages):
        if cond.task != "super_resolution":
            raise ValueError(f"cascade stage {i + 1} must be a super_resolution conditioner, got {cond.task!r}")
    nfes = list(nfe) if isinstance(nfe, Sequence) else [nfe] * (len(sr_stages) + 1)
    augs = list(aug) if isinstance(aug, Sequence) else [aug] * len(sr_stages)
    if len(nfes) != len(sr_stages) + 1 or len(augs) != len(sr_stages):
        raise ValueError(f"{len(sr_stages)} SR stages need {len(sr_stages) + 1} nfe values and {len(sr_stages)} "
                         f"aug levels, got {len(nfes)} and {len(augs)}")
    gens = _generators(generator, n)
    base = as_model(base_denoiser, sr_stages[0][1].source_shape)
    x = generate(base, n, base_cond, sampler=sampler, nfe=nfes[0], schedule=schedule, sampler_options=options,
                 guidance=Guidance(), generators=gens, batch_size=n, device=device, dtype=dtype).clamp(-1, 1)
    outputs = [x]
    for (den, cond), stage_nfe, stage_aug in zip(sr_stages, nfes[1:], augs):
        x = restore(den, cond, x, sampler=sampler, nfe=stage_nfe, schedule=schedule, generator=gens,
                    aug=stage_aug, dtype=dtype, **options)
        outputs.append(x)
    return outputs
