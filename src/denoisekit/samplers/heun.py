"""Heun's method: EDM's deterministic Algorithm 1 and stochastic Algorithm 2 (Karras et al. 2022)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .._utils import GeneratorLike, randn_like
from ._common import Callback, DenoiserFn, denoise, notify, sigma_list


def sample_heun(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0, cond: Any = None,
                generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Karras et al. 2022, Algorithm 2 (Algorithm 1 when ``s_churn=0``): per step, optionally raise
    the noise to ``sigma_hat = sigma (1 + gamma)`` with ``gamma = min(s_churn / N, sqrt(2) - 1)`` for
    sigma in ``[s_tmin, s_tmax]``, then a Heun (trapezoidal) step; the step to 0 is plain Euler."""
    s = sigma_list(sigmas)
    n = len(s) - 1
    for i in range(n):
        sig, nxt = s[i], s[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sig <= s_tmax else 0.0
        sig_hat = sig * (1 + gamma)
        if gamma > 0:
            x = x + randn_like(x, generator) * (s_noise * math.sqrt(sig_hat**2 - sig**2))
        x0 = denoise(denoiser, x, sig_hat, cond, i)
        d = (x - x0) / sig_hat
        x_next = x + (nxt - sig_hat) * d
        if nxt > 0:
            d_next = (x_next - denoise(denoiser, x_next, nxt, cond, i)) / nxt
            x_next = x + (nxt - sig_hat) * 0.5 * (d + d_next)
        x = x_next
        notify(callback, i, x, sig, nxt, x0)
    return x
