"""Step grids optimised for one denoiser, sampler and NFE budget, in the spirit of Align Your Steps.

Sabour et al. 2024 ("Align Your Steps") fit the interior noise levels of a grid to a model by
minimising a KL upper bound with iterative per-point refinement. We keep their structure
(``sigma_max`` fixed, points in ``log sigma`` refined one at a time) and minimise the quantity a
user cares about directly: the expected squared endpoint error of the real sampler,

    L(sigmas) = E_{y_T} || sampler(D, y_T, sigmas) - Phi(y_T) ||^2,

where ``Phi`` is the probability-flow ODE solution of the *same* denoiser (adaptive dopri5 at tight
tolerance), estimated over a fixed batch of start noises ``y_T ~ N(0, s^2 I)``. The search is
derivative-free, so it calls the registered samplers as they are and supports every deterministic
one: a scan over standard grid families (Karras rho, exponential, polyexponential, and where the
last nonzero level may move, several of them) picks the start, then a Hooke & Jeeves (1961) pattern
search refines one ``log sigma`` at a time. The loss is not convex (a step whose end lands at a
small sigma can be worse than a longer one), hence the scan before the local search.

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
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ._utils import GeneratorLike, check_choice, randn
from .likelihood import start_std
from .process import Process
from .samplers import SAMPLERS, STOCHASTIC, get_sampler
from .samplers.adaptive import solve_pf_ode
from .sampling import steps_for_nfe
from .schedules import check_sigmas, get_sigmas_exponential, get_sigmas_karras, get_sigmas_polyexponential

#: Samplers a fixed grid can be optimised for: deterministic and taking one step per grid pair.
OPTIMIZABLE = tuple(sorted(set(SAMPLERS) - STOCHASTIC - {"ode"}))
FORMAT = "denoisekit.sigmas"


#: The ``init="scan"`` families: Karras rho values (sparser than exponential at low noise), the
#: exponential grid (``inf``), and polyexponential rho values (denser at low noise).
SCAN_KARRAS_RHOS = (2.0, 3.0, 5.0, 7.0, 10.0, math.inf)
SCAN_POLYEXP_RHOS = (1.5, 2.0, 3.0)
#: How many last-nonzero levels ``init="scan"`` tries, geometric in ``[sigma_min, sqrt(sigma_min sigma_max)]``.
SCAN_LASTS = 8


def _start_grids(init: str | Tensor | Sequence[float], steps: int, sigma_min: float, sigma_max: float,
                 tune_sigma_min: bool) -> list[Tensor]:
    """Candidate starting grids of ``steps`` steps; the search starts from the best one."""
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


def optimize_sigmas(denoiser: Any, sampler: str, nfe: int, *, sigma_min: float, sigma_max: float,
                    shape: Sequence[int], n_samples: int = 256, iters: int = 30,
                    generator: GeneratorLike = None, init: str | Tensor = "scan",
                    process: Process | None = None, prior_std: float | None = None, cond: Any = None,
                    tune_sigma_min: bool = True, sampler_options: dict[str, Any] | None = None,
                    ref_tol: float = 1e-7, min_step: float = 1e-3, dtype: torch.dtype = torch.float64,
                    device: Any = None, callback: Callable[[dict[str, Any]], None] | None = None) -> Tensor:
    """A grid of ``nfe`` denoiser evaluations for ``sampler`` minimising its expected squared endpoint
    error against the exact ODE solution of ``denoiser`` (Align Your Steps-style, Sabour et al. 2024).

    The grid has ``steps = steps_for_nfe(sampler, nfe)`` steps, the most whose run costs at most
    ``nfe`` evaluations (``nfe`` for Euler, DDIM, DPM++(2M); ``(nfe + 1) // 2`` for Heun, whose last
    step is Euler). It runs from ``sigma_max`` (fixed) down to a last nonzero level, then 0; the last
    level is ``sigma_min`` or, with ``tune_sigma_min``, any level ``>= sigma_min``.
    ``init``: ``"scan"`` (best of the standard families, see the module docstring), ``"karras"``,
    ``"exponential"``, or a grid of ``steps + 1`` entries.
    ``shape`` is one sample's shape ``(...)``; ``n_samples`` start noises ``N(0, s^2)`` (``s`` from
    ``process``/``prior_std`` as :func:`~denoisekit.likelihood.start_std`) of ``dtype`` on ``device``
    are drawn from ``generator`` and kept fixed (``cond``, if per-sample, must have ``n_samples`` rows);
    the reference is :func:`~denoisekit.samplers.solve_pf_ode` at tolerance ``ref_tol``. ``iters`` is
    the number of pattern-search sweeps; it stops early once its step is below ``min_step`` (in
    ``log sigma``). ``callback`` receives ``{"iter", "sigmas", "loss", "step"}`` after each sweep.

    Returns a decreasing float64 ``(steps + 1,)`` tensor ending in 0.
    """
    check_choice("sampler", sampler, OPTIMIZABLE)
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    options = dict(sampler_options or {})
    steps = steps_for_nfe(sampler, nfe, **options)
    starts = _start_grids(init, steps, sigma_min, sigma_max, tune_sigma_min)
    movable = list(range(1, steps - 1)) + ([steps - 1] if tune_sigma_min and steps > 1 else [])
    if not movable:  # a single step, or two with both ends fixed
        return starts[0]

    run = get_sampler(sampler, **options)
    std = start_std(sigma_max, process, prior_std)
    y_T = randn((n_samples, *shape), generator, device=device, dtype=dtype) * std
    with torch.no_grad():
        ref = solve_pf_ode(denoiser, y_T, sigma_max, 0.0, cond=cond, rtol=ref_tol, atol=ref_tol)

        def loss(u: Tensor) -> float:
            grid = torch.cat([u.exp(), u.new_zeros(1)])
            if not bool((grid[1:] < grid[:-1]).all()):  # two levels merged in exp's rounding
                return math.inf
            try:
                out = run(denoiser, y_T, grid, cond=cond)
            except FloatingPointError:  # a grid on which the sampler blows up is just a bad grid
                return math.inf
            err = ((out - ref) ** 2).reshape(n_samples, -1).sum(1).mean()
            return float(err) if torch.isfinite(err) else math.inf

        scored = [(loss(g[:-1].log()), g[:-1].log()) for g in starts]
        best, u = min(scored, key=lambda pair: pair[0])  # u: (steps,) log-sigmas; u[0] stays fixed
        u = _pattern_search(loss, u, best, movable, math.log(sigma_min), iters, min_step, callback)
    return torch.cat([u.exp(), u.new_zeros(1)])


def _pattern_search(loss: Callable[[Tensor], float], u: Tensor, best: float, movable: list[int], floor: float,
                    iters: int, min_step: float, callback: Callable[[dict[str, Any]], None] | None) -> Tensor:
    """Hooke & Jeeves (1961) pattern search over the decreasing log-sigmas ``u`` at ``movable`` indices:
    a sweep tries each point up and down by ``step`` (never past a neighbour, nor below ``floor``);
    after an improving sweep the whole move is tried once more (the pattern move, which follows the
    curved valleys these losses have); after a sweep without improvement the step halves."""
    n = u.numel()
    step = 0.5 * float(u[0] - u[-1]) / (n - 1)  # half the mean gap
    for it in range(iters):
        start = u
        for i in movable:
            for direction in (1.0, -1.0):
                cand = float(u[i]) + direction * step
                hi, lo = float(u[i - 1]), float(u[i + 1]) if i + 1 < n else floor
                if not lo < cand < hi:  # never jump past a neighbour: go half way to it instead
                    cand = 0.5 * (float(u[i]) + (hi if direction > 0 else lo))
                if cand == float(u[i]):
                    continue
                trial = u.clone()
                trial[i] = cand
                value = loss(trial)
                if value < best:
                    u, best = trial, value
                    break
        if u is start:
            step *= 0.5
        else:
            trial = 2 * u - start
            if bool((trial[1:] < trial[:-1]).all()) and float(trial[-1]) >= floor:
                value = loss(trial)
                if value < best:
                    u, best = trial, value
        if callback is not None:
            callback({"iter": it, "sigmas": torch.cat([u.exp(), u.new_zeros(1)]), "loss": best, "step": step})
        if step < min_step:
            break
    return u


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
