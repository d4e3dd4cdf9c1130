"""Learned solvers: the step grid *and* the multistep weights fitted jointly to one denoiser and NFE budget.

:mod:`denoisekit.samplers.tuning.grid` moves only the noise levels of a fixed method. At 5-10 NFE the method's
extrapolation of the data prediction matters as much (Shaul et al. 2024, "Bespoke Non-Stationary Solvers";
Frankel et al. 2025, "S4S: Solving for a Diffusion Model Solver"): the last step from sigma ~0.1-0.5 to 0
turns the final denoiser output into the sample, and a fixed-order formula cannot know how the mixture's
narrow directions bend there. So the whole solver is a small set of parameters,

- the levels ``sigma_1 > ... > sigma_{N-1} >= sigma_min`` (``sigma_0 = sigma_max`` and ``sigma_N = 0``
  fixed), as positive decrements of ``log sigma`` so they stay ordered;
- the weights ``w_ij`` of :mod:`denoisekit.samplers.multistep` (``N (N - 1) / 2`` numbers: each step
  extrapolates the data prediction from every earlier evaluation),

trained by Adam (cosine learning rate) to minimise the mean endpoint distance to the exact probability-flow
ODE solution over a tuning batch (:func:`~denoisekit.samplers.tuning.grid.tuning_batch`), differentiating through
the denoiser. It starts from DPM-Solver++(2M) on the grid :func:`~denoisekit.samplers.tuning.grid.optimize_sigmas`
finds for it, and returns that start instead if training did not lower the loss on the whole tuning batch.
Consistency holds for every weight (see the sampler), so the result is a valid solver for any start noise;
it is tuned for one model, NFE and ``sigma_max``.

Saved as small JSON files (:func:`save_solver`, :func:`load_solver`); sample with
``sample(denoiser, shape, sampler="multistep", sigmas=solver.sigmas, weights=solver.weights)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..._utils import GeneratorLike
from ..multistep import check_weights, dpmpp_2m_weights, multistep
from ...condition import index_condition
from .grid import TuningBatch, check_tuning_condition, optimize_sigmas, tuning_batch
from ...schedules import check_sigmas

FORMAT = "denoisekit.solver"


@dataclass(frozen=True)
class LearnedSolver:
    """A grid ``sigmas`` (``(N + 1,)``, decreasing to 0) and the multistep ``weights`` (``N`` tensors, ``i``
    numbers for step ``i``) of :func:`~denoisekit.samplers.multistep.sample_multistep`; ``meta``: how it was made."""

    sigmas: Tensor
    weights: tuple[Tensor, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        grid = check_sigmas(self.sigmas)
        object.__setattr__(self, "sigmas", grid)
        object.__setattr__(self, "weights", tuple(check_weights(self.weights, grid.shape[0] - 1)))

    @property
    def nfe(self) -> int:
        return self.sigmas.shape[0] - 1

    def sample(self, denoiser: Any, x: Tensor, *, cond: Any = None, callback: Any = None) -> Tensor:
        """Run the solver from ``x`` at ``sigmas[0]`` (VE frame)."""
        from ..multistep import sample_multistep

        return sample_multistep(denoiser, x, self.sigmas, weights=self.weights, cond=cond, callback=callback)


def _levels(decrements: Tensor, log_max: float, log_floor: float) -> Tensor:
    """``sigma_max, sigma_1, ..., sigma_{N-1}, 0`` from positive decrements of ``log sigma`` (softplus of the
    parameters); the last level is held at or above the floor."""
    logs = log_max - torch.cumsum(torch.nn.functional.softplus(decrements), 0)
    logs = torch.maximum(logs, logs.new_tensor(log_floor))
    return torch.cat([logs.new_tensor([math.exp(log_max)]), logs.exp(), logs.new_zeros(1)])


def _softplus_inverse(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def optimize_solver(denoiser: Any, nfe: int, *, sigma_min: float, sigma_max: float, shape: Sequence[int] | None = None,
                    batch: TuningBatch | None = None, n_samples: int = 4096, init: Tensor | Sequence[float] | None = None,
                    iters: int = 600, lr: float = 1e-2, batch_size: int = 1024, generator: GeneratorLike = None,
                    process: Any = None, cond: Any = None, seed: int = 0,
                    callback: Callable[[dict[str, Any]], None] | None = None) -> LearnedSolver:
    """Fit a :class:`LearnedSolver` of ``nfe`` evaluations to ``denoiser`` (module docstring).

    The tuning batch is ``batch`` (:func:`~denoisekit.samplers.tuning.grid.tuning_batch`, shared with grid tuning) or
    ``n_samples`` start noises of one sample's ``shape`` from ``generator``. ``init``: the starting grid
    (default: :func:`~denoisekit.samplers.tuning.grid.optimize_sigmas` for DPM-Solver++(2M) on the same batch).
    Each of ``iters`` Adam steps (learning rate ``lr``, cosine decay) uses ``batch_size`` rows drawn with
    ``seed``; ``cond`` (labels or a dict, :mod:`denoisekit.condition`) has a row per start noise. ``callback`` receives
    ``{"iter", "loss"}`` (the mini-batch loss) every step.
    """
    for name, value, low in (("nfe", nfe, 1), ("iters", iters, 0), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if batch is None:
        if shape is None:
            raise ValueError("give the sample shape, or a tuning batch")
        batch = tuning_batch(denoiser, sigma_max=sigma_max, shape=shape, n_samples=n_samples, generator=generator,
                             process=process, cond=cond)
    y_T, ref = batch
    n = y_T.shape[0]
    check_tuning_condition(cond, n)
    if init is None:
        grid = optimize_sigmas(denoiser, "multistep", nfe, sigma_min=sigma_min, sigma_max=sigma_max, batch=batch,
                               n_eval=min(1024, n), cond=cond)
    else:
        grid = check_sigmas(init)
        if grid.shape[0] != nfe + 1 or grid[-1] != 0 or not math.isclose(float(grid[0]), sigma_max, rel_tol=1e-9):
            raise ValueError(f"init grid must have {nfe + 1} entries (sigma_max={sigma_max}, ..., 0), got {grid.tolist()}")
    start = LearnedSolver(grid, dpmpp_2m_weights(grid), {"init": "dpmpp_2m"})
    if nfe == 1:
        return start
    log_max, log_floor = math.log(sigma_max), math.log(sigma_min)
    logs = torch.cat([grid[:1].log(), grid[1:-1].log().clamp_min(log_floor)])
    decrements = _softplus_inverse((logs[:-1] - logs[1:]).clamp_min(1e-6)).clone().requires_grad_(True)
    weights = [w.clone().requires_grad_(True) for w in start.weights]
    params = [decrements] + [w for w in weights if w.numel()]
    opt = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / max(iters, 1))))
    rows = torch.Generator().manual_seed(seed)

    def loss_on(idx: Tensor | None, sigmas: Tensor, w: Sequence[Tensor]) -> Tensor:
        y, r = (y_T, ref) if idx is None else (y_T[idx], ref[idx])
        out = multistep(denoiser, y, sigmas.to(y.device), w, cond=cond if idx is None else index_condition(cond, idx))
        return (out - r).reshape(out.shape[0], -1).to(torch.float64).norm(dim=1).mean()

    for it in range(iters):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=rows)
        try:
            loss = loss_on(idx, _levels(decrements, log_max, log_floor), weights)
        except FloatingPointError:
            break  # a diverging solver: keep the last good parameters
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if callback is not None:
            callback({"iter": it, "loss": float(loss)})
    with torch.no_grad():
        learned = LearnedSolver(_levels(decrements, log_max, log_floor).detach(), [w.detach() for w in weights])
        try:
            after = float(loss_on(None, learned.sigmas, learned.weights))
        except FloatingPointError:
            after = math.inf
        before = float(loss_on(None, start.sigmas, start.weights))
    if not after < before:
        return LearnedSolver(start.sigmas, start.weights, {**start.meta, "tuning_loss": before, "learned": False})
    return LearnedSolver(learned.sigmas, learned.weights, {"init": "dpmpp_2m", "tuning_loss": after,
                                                           "init_tuning_loss": before, "iters": iters, "lr": lr,
                                                           "learned": True})


def save_solver(path: str | Path, solver: LearnedSolver, meta: dict[str, Any] | None = None) -> None:
    """Write a solver (grid, weights and JSON-serialisable ``meta``) as a small JSON file."""
    payload = {"format": FORMAT, "version": 1, "sigmas": solver.sigmas.tolist(),
               "weights": [w.tolist() for w in solver.weights], "meta": {**solver.meta, **(meta or {})}}
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def load_solver(path: str | Path) -> LearnedSolver:
    """The solver saved by :func:`save_solver`, validated (a wrong file says what it expected)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a {FORMAT} file ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not {"sigmas", "weights"} <= payload.keys():
        raise ValueError(f"{path} is not a {FORMAT} file (a JSON object with format, sigmas and weights)")
    try:
        return LearnedSolver(torch.tensor(payload["sigmas"], dtype=torch.float64), payload["weights"],
                             dict(payload.get("meta", {})))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
