"""A learned solver fitted to a loaded run's own model: ``denoisekit tune`` (Shaul et al. 2024, Frankel et al.
2025; :mod:`denoisekit.samplers.tuning.solver`).

The tuning batch is drawn from the run's own prior (its process at ``sigma_max``) with the run's conditions
(class labels spread evenly over the classes, or the run's prompts) and its default guidance, so the solver
fits the denoiser exactly as ``denoisekit sample`` calls it. Its error, and that of DPM-Solver++(2M) on the
run's default grid at the same NFE, are measured on a second batch of other start noises against the
exact probability-flow ODE solution (:func:`~denoisekit.samplers.tuning.grid.tuning_batch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._utils import seeded_generators
from ..condition import index_condition
from ..conditioning import image_conditioner
from ..generation import Guidance, LoadedModel, guided_denoiser
from ..samplers import get_sampler
from ..samplers.run import DEFAULT_SCHEDULE, steps_for_nfe
from ..samplers.tuning.grid import TuningBatch, tuning_batch
from ..samplers.tuning.solver import LearnedSolver, optimize_solver
from ..schedules import SCHEDULES, get_sigmas
from .generate import user_condition

#: The baseline a tuned solver is compared with (and starts from): DPM-Solver++(2M).
BASELINE = "dpmpp_2m"


@dataclass(frozen=True)
class Tuned:
    """A :class:`~denoisekit.samplers.tuning.solver.LearnedSolver` and the mean endpoint errors, on the held-out
    batch, of it (``error``) and of :data:`BASELINE` on the run's default ``schedule`` (``baseline_error``)."""

    solver: LearnedSolver
    error: float
    baseline_error: float
    schedule: str
    eval_samples: int


def tuning_condition(model: LoadedModel, n: int) -> Any:
    """The conditions of ``n`` tuning samples: labels spread evenly over the classes (``i mod K``), the run's
    prompts in turn, or None; an image-conditioned model needs source images, which tuning does not have."""
    if image_conditioner(model.condition) is not None:
        raise ValueError("tuning an image-conditioned model needs its source images; tune is for class-, text- "
                         "and unconditional runs")
    once, _ = user_condition(model, model.num_classes or 1)  # each class, or each prompt, once
    if once is None:
        return None
    return index_condition(once, torch.arange(n) % len(once["text"] if isinstance(once, dict) else once))


def endpoint_error(run: Callable[..., torch.Tensor], denoiser: Any, batch: TuningBatch, cond: Any) -> float:
    """Mean L2 distance of ``run(denoiser, y_T, cond=...)`` to the exact ODE endpoints of ``batch``."""
    y_T, ref = batch
    with torch.no_grad():
        out = run(denoiser, y_T, cond=cond)
    return float((out - ref).reshape(len(out), -1).to(torch.float64).norm(dim=1).mean())


def tune_solver(model: LoadedModel, nfe: int, *, n_samples: int = 512, eval_samples: int = 256, iters: int = 200,
                batch_size: int = 256, seed: int = 0, guidance: Guidance | None = None, ref_tol: float = 1e-5,
                callback: Callable[[dict[str, Any]], None] | None = None) -> Tuned:
    """Fit a learned solver of ``nfe`` evaluations to ``model`` (module docstring) with
    :func:`~denoisekit.samplers.tuning.solver.optimize_solver`: ``n_samples`` tuning noises (seeds ``seed, ...``),
    ``iters`` Adam steps of ``batch_size`` rows; measured on ``eval_samples`` other noises. The exact endpoints
    are solved at tolerance ``ref_tol`` (float32: tighter is below its precision)."""
    for name, value in (("n_samples", n_samples), ("eval_samples", eval_samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    den, process = guided_denoiser(model, guidance), model.process

    def batch(n: int, first: int) -> tuple[TuningBatch, Any]:
        cond = tuning_condition(model, n)
        return tuning_batch(den, sigma_max=process.sigma_max, shape=model.image_shape, n_samples=n,
                            generator=seeded_generators(first, n), process=process, cond=cond, ref_tol=ref_tol,
                            dtype=torch.float32, device=model.device), cond

    tune, cond = batch(n_samples, seed)
    solver = optimize_solver(den, nfe, sigma_min=process.sigma_min, sigma_max=process.sigma_max, batch=tune,
                             iters=iters, batch_size=batch_size, cond=cond, seed=seed, callback=callback)
    held_out, eval_cond = batch(eval_samples, seed + n_samples)
    schedule = model.defaults.schedule if model.defaults.schedule in SCHEDULES else DEFAULT_SCHEDULE
    grid = get_sigmas(process, schedule, steps_for_nfe(BASELINE, nfe))
    baseline = get_sampler(BASELINE)
    return Tuned(solver, endpoint_error(lambda d, y, cond: solver.sample(d, y, cond=cond), den, held_out, eval_cond),
                 endpoint_error(lambda d, y, cond: baseline(d, y, grid, cond=cond), den, held_out, eval_cond),
                 schedule, eval_samples)
