"""Adaptive-step probability-flow ODE solving through torchdiffeq (Chen et al. 2018).

The ODE is integrated in ``u = log sigma``, where it is ``dy/du = y - D(y, e^u)`` and smooth down
to small sigma; the step to ``sigma = 0`` is the exact limit ``D(y, sigma_min)``, whose error is
``O(sigma_min^2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._common import Callback, DenoiserFn, denoise, notify, sigma_list

#: Where an integration that asks for sigma = 0 stops and takes the limit (error ~SIGMA_LIMIT^2).
SIGMA_LIMIT = 1e-6


def solve_pf_ode(denoiser: DenoiserFn, y: Tensor, sigma_from: float, sigma_to: float, *,
                 cond: Any = None, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                 grid: list[float] | None = None) -> Tensor | list[Tensor]:
    """Solve ``dy/dsigma = (y - D(y, sigma)) / sigma`` from ``sigma_from`` to ``sigma_to``.

    With ``grid`` (decreasing sigmas from ``sigma_from``), returns the states at every grid point.
    """
    from torchdiffeq import odeint

    points = list(grid) if grid is not None else [sigma_from, sigma_to]
    ends_at_zero = points[-1] == 0
    stop = points[:-1] + ([min(SIGMA_LIMIT, 1e-3 * points[-2])] if ends_at_zero else points[-1:])
    u = torch.tensor([math.log(p) for p in stop], dtype=torch.float64)
    shape = y.shape

    u_lo, u_hi = float(u.min()), float(u.max())

    def rhs(ui: Tensor, yi: Tensor) -> Tensor:
        # the solver's trial stages may overshoot the interval: evaluate at its nearest end instead
        sig = math.exp(min(max(float(ui), u_lo), u_hi))
        yy = yi.reshape(shape)
        return (yy - denoise(denoiser, yy, sig, cond, -1)).reshape(yi.shape)

    ys = odeint(rhs, y, u.to(y.device), rtol=rtol, atol=atol, method=method)
    out = [ys[i] for i in range(ys.shape[0])]
    if ends_at_zero:
        out[-1] = denoise(denoiser, out[-1], float(stop[-1]), cond, -1)
    return out if grid is not None else out[-1]


def sample_ode(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, rtol: float = 1e-4, atol: float = 1e-4,
               method: str = "dopri5", cond: Any = None, callback: Callback | None = None,
               generator: Any = None) -> Tensor:
    """Adaptive-step ODE sampling (default Dormand-Prince 5(4)); ``sigmas`` only sets the endpoints
    and the points reported to ``callback``: the solver picks its own steps (NFE varies)."""
    s = sigma_list(sigmas)
    states = solve_pf_ode(denoiser, x, s[0], s[-1], cond=cond, rtol=rtol, atol=atol, method=method, grid=s)
    for i in range(len(s) - 1):
        notify(callback, i, states[i + 1], s[i], s[i + 1], states[i + 1])
    return states[-1]
