"""Step grids optimised for one denoiser, sampler and NFE budget, in the spirit of Align Your Steps.

Sabour et al. 2024 ("Align Your Steps") fit the interior noise levels of a grid to a model by
minimising a KL upper bound with iterative per-point refinement. We keep their structure
(``sigma_max`` fixed, points in ``log sigma`` refined one at a time) and minimise the quantity a
user cares about directly, the expected endpoint error of the real sampler,

    L(sigmas) = E_{y_T} || sampler(D, y_T, sigmas) - Phi(y_T) ||        ("l2", the default)
    L(sigmas) = E_{y_T} || sampler(D, y_T, sigmas) - Phi(y_T) ||^2      ("mse"),

where ``Phi`` is the probability-flow ODE solution of the *same* denoiser (adaptive dopri5 at tight
tolerance), estimated over a fixed batch of start noises ``y_T ~ N(0, s^2 I)`` (:func:`tuning_batch`).
The search is derivative-free, so it calls the registered samplers as they are and supports every
deterministic one.

The errors are heavy-tailed: at 5-10 NFE a few trajectories end in another mode of the data than
their exact solution, and those few dominate the mean (all the more the squared one, hence "l2" by
default: it is also the mean distance a benchmark reports). A small tuning batch then sees too few of
them and the grid fits that batch's outliers; a large one is slow. So the loss is estimated by
*stratified sampling* (Cochran 1977, ch. 5): per-sample errors under the best scanned grids rank the
batch; the hardest ``n_eval / 2`` samples are always evaluated (weight ``1/n``) and ``n_eval / 2``
of the others stand for all of them (weight ``n_easy / (n_eval / 2) / n``). The estimate stays
unbiased for the whole batch's mean while costing ``n_eval`` sampler rows, and it keeps most of the
samples that decide where the grid should be dense.

Search: a scan over standard grid families (Karras rho, exponential, polyexponential, each with
several last nonzero levels) on a subsample; then a Hooke & Jeeves (1961) pattern search that moves
one ``log sigma`` at a time, run coarsely from the ``restarts`` best *distinct* scanned grids (the
loss has several basins: e.g. a long first step followed by dense steps, or an even spread); the
best of those is refined down to ``min_step``.

Beyond AYS, the last nonzero level may move too (``tune_sigma_min``, on by default; ``sigma_min``
is then a floor): at 5-10 NFE, where to stop before the final jump to 0 matters as much as the
interior points, and it is why uniform-t "trailing" grids beat Karras grids there.

Grids are saved as small JSON files (:func:`save_sigmas`, :func:`load_sigmas`) for
``--schedule file:path.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from ..._utils import GeneratorLike, check_choice, randn
from ...condition import index_condition, rows_of
from ...process import Process, start_std
from .. import SAMPLERS, STOCHASTIC, get_sampler
from ..adaptive import solve_pf_ode
from ..run import steps_for_nfe
from ...schedules import check_sigmas, get_sigmas_exponential, get_sigmas_karras, get_sigmas_polyexponential

#: Samplers a fixed grid can be optimised for: deterministic and taking one step per grid pair.
OPTIMIZABLE = tuple(sorted(set(SAMPLERS) - STOCHASTIC - {"ode"}))
FORMAT = "denoisekit.sigmas"
Objective = Literal["l2", "mse"]

#: The ``init="scan"`` families: Karras rho values (sparser than exponential at low noise), the
#: exponential grid (``inf``), and polyexponential rho values (denser at low noise).
SCAN_KARRAS_RHOS = (2.0, 3.0, 5.0, 7.0, 10.0, math.inf)
SCAN_POLYEXP_RHOS = (1.5, 2.0, 3.0)
#: How many last-nonzero levels ``init="scan"`` tries, geometric in ``[sigma_min, sqrt(sigma_min sigma_max)]``.
SCAN_LASTS = 8
#: Scanned grids whose per-sample errors rank the batch into strata (the max over them).
STRATA_GRIDS = 4
#: Two starts of the multi-start search differ by at least this much in some ``log sigma``.
DISTINCT = 0.5
#: The multi-start searches stop at this step (in ``log sigma``); the best one is then refined.
COARSE_STEP = 0.05
#: A sweep that lowers the loss by less than this fraction counts as no progress (the step halves):
#: below it the changes are within the tuning batch's noise.
FTOL = 1e-3

TuningBatch = tuple[Tensor, Tensor]


def tuning_batch(denoiser: Any, *, sigma_max: float, shape: Sequence[int], n_samples: int = 4096,
                 generator: GeneratorLike = None, process: Process | None = None, prior_std: float | None = None,
                 cond: Any = None, ref_tol: float = 1e-7, dtype: torch.dtype = torch.float64,
                 device: Any = None) -> TuningBatch:
    """``(y_T, Phi(y_T))``: ``n_samples`` start noises ``N(0, s^2 I)`` of shape ``(n_samples, *shape)``
    at ``sigma_max`` (``s`` from ``process``/``prior_std`` as :func:`~denoisekit.process.start_std`)
    and their exact probability-flow ODE endpoints (:func:`~denoisekit.samplers.solve_pf_ode` at
    tolerance ``ref_tol``). Build it once and pass it as ``batch`` to several :func:`optimize_sigmas`
    calls (samplers, NFE budgets) for the same model."""
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    check_tuning_condition(cond, n_samples)
    std = start_std(sigma_max, process, prior_std)
    y_T = randn((n_samples, *shape), generator, device=device, dtype=dtype) * std
    with torch.no_grad():
        ref = solve_pf_ode(denoiser, y_T, sigma_max, 0.0, cond=cond, rtol=ref_tol, atol=ref_tol)
    return y_T, ref


def _start_grids(init: str | Tensor | Sequence[float], steps: int, sigma_min: float, sigma_max: float,
                 tune_sigma_min: bool) -> list[Tensor]:
    """Candidate starting grids of ``steps`` steps; the search starts from the best ones."""
    if steps == 1:
        return [torch.tensor([sigma_max, 0.0], dtype=torch.float64)]
    if not isinstance(init, str):
        s = check_sigmas(init)
        last_ok = s[-2] >= sigma_min * (1 - 1e-9) if tune_sigma_min else math.isclose(s[-2], sigma_min, rel_tol=1e-9)
        if s.numel() != steps + 1 or s[-1] != 0 or not math.isclose(s[0], sigma_max, rel_tol=1e-9) or not last_ok:
            raise ValueError(f"init grid must have {steps + 1} entries (sigma_max={sigma_max}, ..., "
                             f"{'>= ' if tune_sigma_min else ''}sigma_min={sigma_min}, 0), got {s.tolist()}")
        return [s]
    check_choice("init", init, ("scan", "karras", "exponential"))
    if init == "karras":
        return [get_sigmas_karras(steps, sigma_min, sigma_max)]
    if init == "exponential":
        return [get_sigmas_exponential(steps, sigma_min, sigma_max)]
    n_last = SCAN_LASTS if tune_sigma_min else 1
    lasts = torch.logspace(math.log10(sigma_min), 0.5 * math.log10(sigma_min * sigma_max), n_last,
                           dtype=torch.float64).tolist() if n_last > 1 else [sigma_min]
    grids = [get_sigmas_exponential(steps, last, sigma_max) if rho == math.inf else
             get_sigmas_karras(steps, last, sigma_max, rho) for rho in SCAN_KARRAS_RHOS for last in lasts]
    grids += [get_sigmas_polyexponential(steps, last, sigma_max, rho) for rho in SCAN_POLYEXP_RHOS for last in lasts]
    return grids


def check_tuning_condition(cond: Any, n: int) -> None:
    """``ValueError`` unless ``cond`` has one row per start noise of the tuning batch (or none per sample)."""
    rows = rows_of(cond)
    if rows not in (None, n):
        raise ValueError(f"cond has {rows} rows but the tuning batch has {n} start noises: give one row per "
                         f"start noise (n_samples)")


def optimize_sigmas(denoiser: Any, sampler: str, nfe: int, *, sigma_min: float, sigma_max: float,
                    shape: Sequence[int] | None = None, n_samples: int = 4096, n_eval: int = 1024,
                    iters: int = 30, restarts: int = 3, generator: GeneratorLike = None,
                    init: str | Tensor = "scan", process: Process | None = None, prior_std: float | None = None,
                    cond: Any = None, tune_sigma_min: bool = True, sampler_options: dict[str, Any] | None = None,
                    objective: Objective = "l2", batch: TuningBatch | None = None, ref_tol: float = 1e-7,
                    min_step: float = 1e-2, dtype: torch.dtype = torch.float64, device: Any = None,
                    callback: Callable[[dict[str, Any]], None] | None = None) -> Tensor:
    """A grid of ``nfe`` denoiser evaluations for ``sampler`` minimising its expected endpoint error
    against the exact ODE solution of ``denoiser`` (Align Your Steps-style, Sabour et al. 2024; the
    estimator and the search are in the module docstring).

    The grid has ``steps = steps_for_nfe(sampler, nfe)`` steps, the most whose run costs at most
    ``nfe`` evaluations (``nfe`` for Euler, DDIM, DPM++(2M); ``(nfe + 1) // 2`` for Heun, whose last
    step is Euler). It runs from ``sigma_max`` (fixed) down to a last nonzero level, then 0; the last
    level is ``sigma_min`` or, with ``tune_sigma_min``, any level ``>= sigma_min``.
    ``init``: ``"scan"`` (standard families, see the module docstring), ``"karras"``,
    ``"exponential"``, or a grid of ``steps + 1`` entries.
    ``objective``: ``"l2"`` (mean distance) or ``"mse"`` (mean squared distance).
    The tuning batch is ``batch`` (from :func:`tuning_batch`) or ``n_samples`` fresh start noises of one
    sample's ``shape`` drawn from ``generator`` (``process``, ``prior_std``, ``cond``, ``ref_tol``,
    ``dtype``, ``device`` as there); ``cond`` (labels or a dict, :mod:`denoisekit.condition`) has a row
    per start noise.
    Each loss evaluation runs the sampler on ``n_eval`` of them (all if ``n_eval >= n_samples``),
    stratified as in the module docstring. ``restarts`` distinct scanned grids are searched coarsely;
    ``iters`` caps the sweeps of each pattern search, which stops once its step (in ``log sigma``)
    is below ``min_step``. ``callback`` receives ``{"iter", "sigmas", "loss", "step"}`` after each
    sweep of the final refinement.

    Returns a decreasing float64 ``(steps + 1,)`` tensor ending in 0.
    """
    check_choice("sampler", sampler, OPTIMIZABLE)
    check_choice("objective", objective, ("l2", "mse"))
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    for name, value, low in (("n_samples", n_samples, 1), ("n_eval", n_eval, 2), ("iters", iters, 0),
                             ("restarts", restarts, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if batch is None and shape is None:
        raise ValueError("give the sample shape, or a tuning batch")
    options = dict(sampler_options or {})
    steps = steps_for_nfe(sampler, nfe, **options)
    starts = _start_grids(init, steps, sigma_min, sigma_max, tune_sigma_min)
    movable = list(range(1, steps - 1)) + ([steps - 1] if tune_sigma_min and steps > 1 else [])
    if not movable:  # a single step, or two with both ends fixed
        return starts[0]

    if batch is None:
        batch = tuning_batch(denoiser, sigma_max=sigma_max, shape=shape, n_samples=n_samples, generator=generator,
                             process=process, prior_std=prior_std, cond=cond, ref_tol=ref_tol, dtype=dtype,
                             device=device)
    y_T, ref = batch
    if y_T.shape != ref.shape or y_T.ndim < 1:
        raise ValueError(f"a tuning batch is (start noises, endpoints) of equal shape, got {tuple(y_T.shape)} "
                         f"and {tuple(ref.shape)}")
    n = y_T.shape[0]
    check_tuning_condition(cond, n)
    run = get_sampler(sampler, **options)
    floor = math.log(sigma_min)

    def errors(u: Tensor, idx: Tensor) -> Tensor:
        """Per-sample errors of the grid ``exp(u), 0`` on the rows ``idx`` (inf if the sampler fails)."""
        grid = torch.cat([u.exp(), u.new_zeros(1)])
        bad = torch.full((idx.numel(),), math.inf, dtype=torch.float64)
        if not bool((grid[1:] < grid[:-1]).all()):  # two levels merged in exp's rounding
            return bad
        try:
            out = run(denoiser, y_T[idx], grid, cond=index_condition(cond, idx))
        except FloatingPointError:  # a grid on which the sampler blows up is just a bad grid
            return bad
        sq = ((out - ref[idx]) ** 2).reshape(idx.numel(), -1).sum(1).to(torch.float64)
        return sq if objective == "mse" else sq.sqrt()

    def estimator(idx: Tensor, weights: Tensor) -> Callable[[Tensor], float]:
        def loss(u: Tensor) -> float:
            value = float((weights * errors(u, idx)).sum())
            return value if math.isfinite(value) else math.inf
        return loss

    with torch.no_grad():
        everyone = torch.arange(n)
        if n_eval >= n or len(starts) == 1:
            loss = estimator(everyone, torch.full((n,), 1.0 / n, dtype=torch.float64))
            scored = sorted(((loss(g[:-1].log()), g[:-1].log()) for g in starts), key=lambda pair: pair[0])
        else:
            scan = everyone[:n_eval // 2]
            scan_loss = estimator(scan, torch.full((scan.numel(),), 1.0 / scan.numel(), dtype=torch.float64))
            scored = sorted(((scan_loss(g[:-1].log()), g[:-1].log()) for g in starts), key=lambda pair: pair[0])
            hardness = torch.stack([errors(u, everyone) for _, u in scored[:STRATA_GRIDS]]).max(0).values
            ranked = hardness.argsort(descending=True)
            hard, rest = ranked[:n_eval // 2], ranked[n_eval // 2:].sort().values  # rest: in batch order
            easy = rest[:n_eval - hard.numel()]
            weights = torch.cat([torch.full((hard.numel(),), 1.0 / n, dtype=torch.float64),
                                 torch.full((easy.numel(),), rest.numel() / easy.numel() / n, dtype=torch.float64)])
            loss = estimator(torch.cat([hard, easy]), weights)

        chosen: list[Tensor] = []
        for _, u in scored:
            if len(chosen) == restarts:
                break
            if all(float((u - c).abs().max()) >= DISTINCT for c in chosen):
                chosen.append(u)
        if len(chosen) == 1:
            u, step, best = chosen[0], None, loss(chosen[0])
        else:
            coarse = [_pattern_search(loss, c, loss(c), movable, floor, iters, max(COARSE_STEP, min_step), None)
                      for c in chosen]
            u, step, best = min(coarse, key=lambda result: result[2])
        u, _, _ = _pattern_search(loss, u, best, movable, floor, iters, min_step, callback, step)
    return torch.cat([u.exp(), u.new_zeros(1)])


def _pattern_search(loss: Callable[[Tensor], float], u: Tensor, best: float, movable: list[int], floor: float,
                    iters: int, min_step: float, callback: Callable[[dict[str, Any]], None] | None,
                    step: float | None = None) -> tuple[Tensor, float, float]:
    """Hooke & Jeeves (1961) pattern search over the decreasing log-sigmas ``u`` at ``movable`` indices;
    returns ``(u, step, loss)``.

    A sweep tries each point up and down by ``step`` (never past a neighbour, nor below ``floor``:
    it goes half way to a neighbour closer than ``step``, if that still moves it by ``step / 4``);
    after an improving sweep the whole move is tried once more (the pattern move, which follows the
    curved valleys these losses have); after a sweep that improves by less than :data:`FTOL` the step
    halves. The search stops after ``iters`` sweeps or once the step is below ``min_step``.
    """
    n = u.numel()
    if step is None:
        step = 0.5 * float(u[0] - u[-1]) / (n - 1)  # half the mean gap
    for it in range(iters):
        if step < min_step:
            break
        start, before = u, best
        for i in movable:
            for direction in (1.0, -1.0):
                cand = float(u[i]) + direction * step
                hi, lo = float(u[i - 1]), float(u[i + 1]) if i + 1 < n else floor
                if not lo < cand < hi:
                    cand = 0.5 * (float(u[i]) + (hi if direction > 0 else lo))
                    if abs(cand - float(u[i])) < 0.25 * step:  # else it creeps towards the neighbour forever
                        continue
                trial = u.clone()
                trial[i] = cand
                value = loss(trial)
                if value < best:
                    u, best = trial, value
                    break
        if u is not start:
            trial = 2 * u - start
            if bool((trial[1:] < trial[:-1]).all()) and float(trial[-1]) >= floor:
                value = loss(trial)
                if value < best:
                    u, best = trial, value
        if not before - best > FTOL * before:  # (also when every grid so far failed: inf - inf)
            step *= 0.5
        if callback is not None:
            callback({"iter": it, "sigmas": torch.cat([u.exp(), u.new_zeros(1)]), "loss": best, "step": step})
    return u, step, best


def save_sigmas(path: str | Path, sigmas: Tensor | Sequence[float], meta: dict[str, Any] | None = None) -> None:
    """Write a grid (and JSON-serialisable ``meta``: sampler, NFE, losses...) as a small JSON file."""
    s = check_sigmas(sigmas)
    payload = {"format": FORMAT, "version": 1, "sigmas": s.tolist(), "meta": dict(meta or {})}
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def _read(path: str | Path) -> dict[str, Any]:
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "sigmas" not in payload:
        raise ValueError(f"{path} is not a {FORMAT} file (a JSON object with format and sigmas)")
    return payload


def load_sigmas(path: str | Path) -> Tensor:
    """The grid saved by :func:`save_sigmas`: a validated decreasing float64 tensor."""
    return check_sigmas(_read(path)["sigmas"])


def load_sigmas_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dictionary saved with a grid."""
    return dict(_read(path).get("meta", {}))
