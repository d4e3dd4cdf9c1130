"""Restoring a measurement ``y = A x + sigma_y eps`` with a trained run as the prior: one entry for every method.

=========  =====================================================================  ====================
method     what                                                                   NFE of budget ``N``
=========  =====================================================================  ====================
pinv       the operator's pseudo-inverse ``A^+ y`` (the baseline; no model)       0
repaint    RePaint with resampling (inpainting only; :mod:`.repaint`)             <= N
dps        DPS wrapper (:class:`~.posterior.DPS`) + DDIM with ``eta = 1``         N (+ N backward)
diffpir    DiffPIR wrapper (:class:`~.posterior.DiffPIR`) + DDIM with ``eta``     N
daps       DAPS (:func:`~.posterior.daps`), ``N / ode_steps`` annealing levels    N
=========  =====================================================================  ====================

Pixel runs only: the operators act on images, and a latent run's denoiser makes latents (DPS through the
decoder, latent DPS, is not built here). All images are restored in one batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import GeneratorLike, check_choice, seeded_generators
from ..data.operators import Inpaint, LinearOperator
from ..generation import Guidance, LoadedModel, generate
from ..generation.generate import guided_denoiser
from ..schedules import get_sigmas
from .posterior import DPS, DiffPIR, daps
from .repaint import repaint, repaint_nfe

METHODS = ("pinv", "repaint", "dps", "diffpir", "daps")

#: Each method's options: the most frequent winners of ``benchmarks/inverse.py --tune`` over its four tasks
#: (training-split digits, 100 NFE); override with ``options``.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "pinv": {},
    "repaint": {"jump_length": 5, "jump_n_sample": 3},
    "dps": {"zeta": 3.0, "eta": 1.0},
    "diffpir": {"lam": 0.3, "eta": 1.0},
    "daps": {"ode_steps": 1, "r_scale": 1.0},
}


@dataclass(frozen=True)
class Restoration:
    """Restored images ``(B, C, H, W)`` in ``[-1, 1]``, the denoiser evaluations spent per image, and seconds."""

    images: Tensor
    nfe: int
    seconds: float


def check_prior(model: LoadedModel, method: str) -> None:
    """A run that can serve as the prior of ``method``: a pixel run that is not image-conditioned."""
    check_choice("method", method, METHODS)
    if model.decoder is not None:
        raise ValueError(f"{model.name or 'this run'} is a latent run: inverse problems need a pixel run (the "
                         f"operators act on pixels; 'denoisekit edit' supports latent runs)")
    if model.kind == "image":
        raise ValueError("an image-conditioned (Palette) run is not a prior: sample it with "
                         "'denoisekit sample --source'")


def restore(model: LoadedModel, operator: LinearOperator, measurement: Tensor, method: str, *, sigma_y: float,
            nfe: int = 100, cond: Any = None, guidance: Guidance | None = None, generators: GeneratorLike = None,
            seed: int = 0, options: Mapping[str, Any] | None = None) -> Restoration:
    """Restore ``measurement`` ``(B, ...)`` = ``operator(x) + sigma_y eps`` with ``method`` (module table) in at most
    ``nfe`` evaluations per image; ``options`` override :data:`DEFAULT_OPTIONS`; ``cond`` / ``guidance`` as
    :func:`~denoisekit.generation.generate` (default: the run's own guidance)."""
    check_prior(model, method)
    opts = {**DEFAULT_OPTIONS[method], **dict(options or {})}
    unknown = set(opts) - set(DEFAULT_OPTIONS[method])
    if unknown:
        raise ValueError(f"unknown {method} options {sorted(unknown)}; allowed: "
                         f"{sorted(DEFAULT_OPTIONS[method]) or 'none'}")
    n = len(measurement)
    gens = seeded_generators(seed, n) if generators is None else generators
    meas = measurement.to(model.device)
    shape = (n, *model.image_shape)
    t0 = time.perf_counter()
    if method == "pinv":
        return Restoration(operator.pinv(meas).clamp(-1, 1).cpu(), 0, time.perf_counter() - t0)
    den = guided_denoiser(model, guidance)
    process, schedule = model.process, model.defaults.schedule
    if method == "repaint":
        if not isinstance(operator, Inpaint):
            raise ValueError(f"repaint inpaints: it needs an inpainting operator, got {operator.name}")
        steps = max(s for s in range(1, nfe + 1) if s == 1 or repaint_nfe(s, **opts) <= nfe)
        grid = get_sigmas(process, schedule, steps)
        x = repaint(den, meas, operator.mask.to(meas), grid, cond=cond, generator=gens,
                    prior_std=float(process.prior_std(grid[0])), **opts)
        used = repaint_nfe(steps, **opts)
    elif method == "daps":
        grid = get_sigmas(process, "karras", 2)
        x = daps(den, operator, meas, shape, sigma_y=sigma_y, annealing_steps=max(1, nfe // opts["ode_steps"]),
                 sigma_max=float(grid[0]), sigma_min=float(grid[-2]), cond=cond, generator=gens,
                 prior_std=float(process.prior_std(grid[0])), device=model.device, **opts)
        used = max(1, nfe // opts["ode_steps"]) * opts["ode_steps"]
    else:
        wrapped = (DPS(den, operator, meas, opts["zeta"]) if method == "dps"
                   else DiffPIR(den, operator, meas, sigma_y, opts["lam"]))
        m = dataclasses.replace(model, denoiser=wrapped)
        x = generate(m, n, cond, sampler="ddim", nfe=nfe, sampler_options={"eta": opts["eta"]}, guidance=Guidance(),
                     generators=gens, batch_size=n)
        used = nfe
    return Restoration(x.clamp(-1, 1).cpu(), used, time.perf_counter() - t0)


def data_residual(operator: LinearOperator, x: Tensor, measurement: Tensor) -> Tensor:
    """``(B,)`` RMS of ``measurement - A x`` over the measured values (those ``A`` does not zero): about ``sigma_y``
    for an image that explains the data."""
    r = measurement.to(x) - operator(x)
    count = (operator(torch.ones_like(x)) != 0).flatten(1).sum(1).clamp(min=1)
    return (r.flatten(1).pow(2).sum(1) / count).sqrt()
