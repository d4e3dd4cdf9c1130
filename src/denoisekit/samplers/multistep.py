"""A linear multistep sampler with explicit weights: the family that learned solvers live in.

Each step evaluates the denoiser once, ``D_i = D(x_i, sigma_i)``, and moves in the VE frame as

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) [D_i + sum_{j<i} w_ij (D_j - D_i)],

an exponential-integrator step (Lu et al. 2022b) whose data prediction is extrapolated from the history
with weights ``w_i`` (one per earlier evaluation). The bracket is exact whenever the denoiser's output is
constant along the path, whatever the weights, so every member is consistent. ``w_ij = 0`` is DDIM (Euler
in sigma); ``w_i,i-1 = -h_i / (2 h_{i-1})`` with ``h_i = log(sigma_i / sigma_{i+1})`` is DPM-Solver++(2M)
(the default, :func:`dpmpp_2m_weights`, first order on the first and the last step, as
``sample_dpmpp_2m``). :func:`denoisekit.samplers.tuning.solver.optimize_solver` fits the weights and the grid to one
model and NFE budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._utils import GeneratorLike
from ..schedules import check_sigmas
from ._common import Callback, DenoiserFn, denoise, notify


def dpmpp_2m_weights(sigmas: Tensor | Sequence[float]) -> list[Tensor]:
    """The weights that make :func:`sample_multistep` DPM-Solver++(2M) on ``sigmas``: first order on the first
    step and on the last (``sample_dpmpp_2m``'s default ``lower_order_final``)."""
    s = check_sigmas(sigmas).tolist()
    weights = []
    for i in range(len(s) - 1):
        w = torch.zeros(i, dtype=torch.float64)
        if 1 <= i < len(s) - 2:  # not the first step, nor the last
            h, h_prev = math.log(s[i] / s[i + 1]), math.log(s[i - 1] / s[i])
            w[i - 1] = -h / (2 * h_prev)
        weights.append(w)
    return weights


def check_weights(weights: Sequence[Any], steps: int) -> list[Tensor]:
    """``weights`` as float64 tensors, one of ``i`` entries for step ``i``; a ``ValueError`` names a wrong step."""
    if len(weights) != steps:
        raise ValueError(f"weights: need one entry per step ({steps}), got {len(weights)}")
    out = []
    for i, w in enumerate(weights):
        t = torch.as_tensor(w, dtype=torch.float64)
        if t.shape != (i,) or not torch.isfinite(t).all():
            raise ValueError(f"weights[{i}] must be {i} finite numbers (one per earlier evaluation), got {w!r}")
        out.append(t)
    return out


def multistep(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, weights: Sequence[Tensor], *, cond: Any = None,
              callback: Callback | None = None) -> Tensor:
    """The update of the module docstring on a tensor grid, differentiable in ``x``, ``sigmas`` and ``weights``
    (what :func:`~denoisekit.samplers.tuning.solver.optimize_solver` trains through). No validation: see
    :func:`sample_multistep`."""
    history: list[Tensor] = []
    for i in range(sigmas.shape[0] - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        d = denoise(denoiser, x, sigma, cond, i)
        history.append(d)
        pred = d
        for j in range(i):
            pred = pred + weights[i][j].to(d.dtype) * (history[j] - d)
        ratio = (nxt / sigma).to(x.dtype)
        x = ratio * x + (1 - ratio) * pred
        if callback is not None:
            notify(callback, i, x, float(sigma), float(nxt), d)
    return x


def sample_multistep(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, weights: Sequence[Any] | None = None,
                     cond: Any = None, generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """The linear multistep sampler of the module docstring: 1 NFE per step, deterministic. ``weights``:
    one sequence of ``i`` numbers for step ``i`` (e.g. a :class:`~denoisekit.samplers.tuning.solver.LearnedSolver`'s,
    on its own grid); None is DPM-Solver++(2M)."""
    grid = check_sigmas(sigmas)
    steps = grid.shape[0] - 1
    w = dpmpp_2m_weights(grid) if weights is None else check_weights(weights, steps)
    return multistep(denoiser, x, grid.to(x.device), w, cond=cond, callback=callback)
