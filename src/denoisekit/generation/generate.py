"""``generate()``: the one way images are made from a :class:`~denoisekit.generation.model.LoadedModel`.

It guides the denoiser (:class:`Guidance`: classifier-free guidance, Ho & Salimans 2022, with rescale and
interval; classifier guidance, Dhariwal & Nichol 2021), picks the grid (a named schedule for an NFE budget,
an explicit or saved grid, or a learned solver's), draws each sample's prior noise from its own generator
(sample ``i`` uses seed ``seed + i``, so a sample does not depend on the batch around it), samples in
batches with :func:`~denoisekit.samplers.run.sample` and decodes a latent model's samples.

``x_init`` with ``sigma_start`` starts from a given VE-frame point ``y = x + sigma_start * eps`` on the grid
truncated to ``sigma_start`` (:func:`truncate_sigmas`): SDEdit's start (Meng et al. 2022, Sec. 3), the seam
that image-to-image editing builds on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._utils import GeneratorLike, seeded_generators
from ..condition import check_condition, index_condition
from ..denoiser import DenoiserFn
from ..guidance import Classifier, ClassifierFreeGuidance, ClassifierGuidance, CLIPGuidance, TextEnergy
from ..samplers import SAMPLERS
from ..samplers.run import sample, sampler_grid
from ..samplers.tuning.grid import load_sigmas
from ..samplers.tuning.solver import LearnedSolver
from ..schedules import SCHEDULES, check_sigmas
from .model import LoadedModel, decode as decode_latents

#: ``schedule="file:PATH"`` reads a grid saved by :func:`~denoisekit.samplers.tuning.grid.save_sigmas`.
FILE_PREFIX = "file:"


@dataclass(frozen=True)
class Guidance:
    """How :func:`generate` guides the denoiser.

    ``cfg_scale`` (1: none), ``rescale`` (phi of Lin et al. 2023), ``interval`` ``(sigma_lo, sigma_hi)``
    (Kynkaanniemi et al. 2024) and ``negative`` (a condition or prompt for the unconditional branch): the
    :class:`~denoisekit.guidance.ClassifierFreeGuidance` of the model's null label. ``classifier``
    (``(y, sigma) -> logits`` in the VE frame) at ``classifier_scale``:
    :class:`~denoisekit.guidance.ClassifierGuidance` toward the labels of ``cond``, outside CFG;
    ``classifier_conditional`` says whether the model itself takes the labels (None: a class model does).
    ``clip`` (``energy(y, sigma, prompts) -> (B,)``, e.g. :class:`~denoisekit.eval.clip.CLIPEnergy` of the
    noise-aware CLIP) at ``clip_scale``: :class:`~denoisekit.guidance.CLIPGuidance` toward the prompts of
    ``cond``, outside CFG and classifier guidance (the model keeps its prompts when it is a text model).
    """

    cfg_scale: float = 1.0
    rescale: float = 0.0
    interval: tuple[float, float] | None = None
    negative: Any = None
    classifier: Classifier | None = None
    classifier_scale: float = 1.0
    classifier_conditional: bool | None = None
    clip: TextEnergy | None = None
    clip_scale: float = 0.0


def default_guidance(model: LoadedModel) -> Guidance:
    """The run's own guidance: its ``sample.cfg_scale`` where classifier-free guidance applies, else none."""
    return Guidance(cfg_scale=model.defaults.cfg_scale) if model.guided else Guidance()


def guided_denoiser(model: LoadedModel, guidance: Guidance | None = None) -> DenoiserFn:
    """The model's denoiser wrapped in the guidance asked for (default: :func:`default_guidance`)."""
    g = default_guidance(model) if guidance is None else guidance
    den: Any = model.denoiser
    if g.cfg_scale != 1:
        den = ClassifierFreeGuidance(den, g.cfg_scale, null_label=model.null_label, rescale=g.rescale,
                                     interval=g.interval, negative=g.negative)
    if g.classifier is not None:
        conditional = model.kind == "class" if g.classifier_conditional is None else g.classifier_conditional
        den = ClassifierGuidance(den, g.classifier, g.classifier_scale, conditional=conditional)
    if g.clip is not None and g.clip_scale != 0:
        den = CLIPGuidance(den, g.clip, g.clip_scale, conditional=model.kind == "text")
    return den


def truncate_sigmas(sigmas: Tensor, sigma_start: float) -> Tensor:
    """The grid ``sigmas`` started at ``sigma_start``: ``sigma_start`` then the levels below it (SDEdit's
    truncated reverse process, Meng et al. 2022, Sec. 3). ``sigma_start = sigmas[0]`` keeps the grid."""
    grid = check_sigmas(sigmas)
    top = float(grid[0])
    if not 0 < sigma_start <= top * (1 + 1e-9):
        raise ValueError(f"sigma_start must be in (0, {top:.6g}] (the grid's first level), got {sigma_start}")
    if math.isclose(sigma_start, top, rel_tol=1e-9):
        return grid
    return torch.cat([grid.new_tensor([sigma_start]), grid[grid < sigma_start]])


def sampling_grid(model: LoadedModel, *, sampler: str, nfe: int, schedule: str, sigmas: Tensor | None = None,
                  options: Mapping[str, Any] | None = None) -> Tensor:
    """The grid :func:`generate` samples on: ``sigmas`` if given, a few-step student's own grid
    (``model.trained_steps``; another sampler or NFE is a ``ValueError``), a grid file (``schedule="file:PATH"``),
    else the named ``schedule`` with the most steps whose run costs at most ``nfe`` evaluations."""
    if sigmas is not None:
        return check_sigmas(sigmas)
    trained = model.trained_steps
    if trained is not None:  # a student trained for its own steps: those, and no others
        if sampler != trained.sampler or nfe != trained.steps:
            raise ValueError(f"{model.name or 'this model'} is a {trained.method} student trained for {trained.steps} "
                             f"{trained.sampler} steps on its teacher's grid: sample it with sampler "
                             f"{trained.sampler!r} and NFE {trained.steps} (got {sampler!r}, {nfe})")
        return check_sigmas(trained.sigmas)
    if schedule.startswith(FILE_PREFIX):
        path = Path(schedule[len(FILE_PREFIX):])
        if not path.is_file():
            raise ValueError(f"schedule {schedule!r}: {str(path)!r} does not exist")
        return load_sigmas(path)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(sorted(SCHEDULES))} or "
                         f"{FILE_PREFIX}PATH (a grid saved by save_sigmas)")
    return sampler_grid(model.process, sampler, schedule, nfe, **dict(options or {}))


def _generators(generators: GeneratorLike, seed: int, n: int) -> torch.Generator | list[torch.Generator]:
    """The given generators (one, or one per sample), else one per sample seeded ``seed + i``."""
    if generators is None:
        return seeded_generators(seed, n)
    if isinstance(generators, torch.Generator):
        return generators
    gens = list(generators)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for {n} samples")
    return gens


def _on(cond: Any, device: torch.device) -> Any:
    """``cond`` with its tensors on ``device``."""
    if isinstance(cond, Tensor):
        return cond.to(device)
    if isinstance(cond, Mapping):
        return {k: _on(v, device) for k, v in cond.items()}
    return cond


def generate(model: LoadedModel, n: int, cond: Any = None, *, sampler: str | None = None, nfe: int | None = None,
             schedule: str | None = None, sigmas: Tensor | None = None, solver: LearnedSolver | None = None,
             sampler_options: Mapping[str, Any] | None = None, guidance: Guidance | None = None,
             seed: int | None = None, generators: GeneratorLike = None, batch_size: int = 256,
             callback: Callable[[dict[str, Any]], None] | None = None, x_init: Tensor | None = None,
             sigma_start: float | None = None, decode: bool = True, device: Any = None,
             dtype: torch.dtype = torch.float32, progress: bool = False) -> Tensor:
    """``n`` samples ``(n, C, H, W)`` of ``model`` (module docstring); images for a latent model unless
    ``decode=False``. Not clamped: pixel models may overshoot ``[-1, 1]`` slightly.

    - ``cond``: the per-sample condition for ``n`` samples (a ``(n,)`` label tensor, ``{"text": [n prompts]}``,
      ``{"concat": ...}``, ...), or None;
    - ``sampler``, ``nfe``, ``schedule`` (a name or ``"file:PATH"``): default the run's (``model.defaults``);
      ``sigmas`` overrides schedule and NFE; ``solver`` (a
      :class:`~denoisekit.samplers.tuning.solver.LearnedSolver`) sets the sampler, its weights and grid;
      ``sampler_options`` go to the sampler;
    - ``guidance``: a :class:`Guidance` (default: :func:`default_guidance`);
    - ``seed`` (default the run's, else 0): sample ``i`` uses a generator seeded ``seed + i``; or
      ``generators``: one per sample (stateful: a pipeline may draw from them first), or one for all;
    - ``batch_size`` samples per sampler call; ``callback`` gets each step's payload plus ``"batch"``
      (the index of the batch's first sample) and ``"n"``;
    - ``x_init`` ``(n, *image_shape)``: the VE-frame start at ``sigma_start`` (default: the grid's first level)
      instead of prior noise; the grid is truncated there (:func:`truncate_sigmas`);
    - ``progress``: a bar over the images (on stderr) when they take more than one batch.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    d = model.defaults
    options = dict(sampler_options or {})
    if solver is not None:
        if sampler not in (None, "multistep") or sigmas is not None or schedule is not None or "weights" in options:
            raise ValueError("solver sets the sampler, its weights and the grid: give no sampler, sigmas or schedule")
        sampler, sigmas, options["weights"] = "multistep", solver.sigmas, solver.weights
    sampler, nfe, schedule = sampler or d.sampler, nfe if nfe is not None else d.nfe, schedule or d.schedule
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(sorted(SAMPLERS))}")
    grid = sampling_grid(model, sampler=sampler, nfe=nfe, schedule=schedule, sigmas=sigmas, options=options)
    if sigma_start is not None:
        if x_init is None:
            raise ValueError("sigma_start needs x_init: the noised image to start from")
        if solver is not None and not math.isclose(sigma_start, float(grid[0]), rel_tol=1e-9):
            raise ValueError("a learned solver's weights fit its own grid: it cannot start at another sigma_start")
        grid = truncate_sigmas(grid, sigma_start)
    shape = (n, *model.image_shape)
    if x_init is not None and tuple(x_init.shape) != shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
    check_condition(cond, n)
    gens = _generators(generators, d.seed if seed is None else seed, n)
    device = torch.device(device) if device is not None else model.device
    den = guided_denoiser(model, guidance)
    chunks = []
    bar = tqdm(total=n, unit="img", desc="sampling", dynamic_ncols=True, disable=not progress or n <= batch_size)
    for i in range(0, n, batch_size):
        j = min(n, i + batch_size)
        part = None if cond is None else _on(index_condition(cond, torch.arange(i, j)), device)
        step = None if callback is None else (lambda info, i=i: callback({**info, "batch": i, "n": n}))
        x = sample(den, (j - i, *model.image_shape), sampler=sampler, sigmas=grid, cond=part,
                   generator=gens if isinstance(gens, torch.Generator) else gens[i:j], callback=step,
                   device=device, dtype=dtype, x_init=None if x_init is None else x_init[i:j], **options)
        chunks.append(decode_latents(model.decoder, x) if decode and model.decoder is not None else x)
        bar.update(j - i)
    bar.close()
    return torch.cat(chunks)
