"""Flow-matching ODE solvers: Euler, Heun and RK4 in the rectified-flow frame.

The VE state ``y`` at noise ``sigma`` is, in the rectified-flow frame (alpha = 1 - t, sigma = t),
``x = y / (1 + sigma)`` at ``t = sigma / (1 + sigma)``, with velocity ``v = (x - x0_hat) / t``
(Liu et al. 2022; Lipman et al. 2022). These solve that ODE for any model; for a flow model they are
the usual fixed-step flow samplers. Flow-Euler equals DDIM exactly (a test says so). A stage at
``t = 0`` would need the velocity at the data, which a denoiser does not give, so a step that ends
at 0 is the exact Euler limit ``x0_hat`` instead, as in EDM's Heun sampler.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from .._utils import check_choice
from ._common import Callback, DenoiserFn, denoise, notify, sigma_list

# Butcher tableaux (c, a, b) of the explicit methods.
_TABLEAUX: dict[str, tuple[list[float], list[list[float]], list[float]]] = {
    "euler": ([0.0], [[]], [1.0]),
    "heun": ([0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
    "rk4": ([0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}


def _flow_solve(denoiser: DenoiserFn, y: Tensor, sigmas: Tensor, method: str, cond: Any,
                callback: Callback | None) -> Tensor:
    check_choice("flow method", method, _TABLEAUX)
    c, a, b = _TABLEAUX[method]
    s = sigma_list(sigmas)
    x = y / (1 + s[0])
    x0 = y
    for i in range(len(s) - 1):
        t, t_next = s[i] / (1 + s[i]), s[i + 1] / (1 + s[i + 1])
        h = t_next - t

        def velocity(xs: Tensor, ts: float) -> Tensor:
            nonlocal x0
            sig = ts / (1 - ts)
            x0 = denoise(denoiser, xs * (1 + sig), sig, cond, i)
            return (xs - x0) / ts

        if t_next == 0:  # exact Euler limit at the data: x0_hat
            velocity(x, t)
            x = x0
        else:
            ks: list[Tensor] = []
            for j in range(len(c)):
                xs = x
                for aj, k in zip(a[j], ks):
                    if aj:
                        xs = xs + (h * aj) * k
                ks.append(velocity(xs, t + c[j] * h))
            for bj, k in zip(b, ks):
                x = x + (h * bj) * k
        notify(callback, i, x * (1 + s[i + 1]), s[i], s[i + 1], x0)
    return x * (1 + s[-1])


def sample_flow(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *,
                method: Literal["euler", "heun", "rk4"] = "euler", cond: Any = None,
                callback: Callback | None = None, generator: Any = None) -> Tensor:
    """Fixed-step explicit Runge-Kutta (``euler``, ``heun``, ``rk4``) on the rectified-flow ODE."""
    return _flow_solve(denoiser, x, sigmas, method, cond, callback)


def sample_flow_euler(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """Flow-matching Euler: ``x_{t'} = x_t + (t' - t) v(x_t, t)``."""
    return sample_flow(denoiser, x, sigmas, method="euler", **kwargs)


def sample_flow_heun(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """Flow-matching Heun (explicit trapezoid), second order."""
    return sample_flow(denoiser, x, sigmas, method="heun", **kwargs)


def sample_flow_rk4(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """Flow-matching classic fourth-order Runge-Kutta."""
    return sample_flow(denoiser, x, sigmas, method="rk4", **kwargs)
