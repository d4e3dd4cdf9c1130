"""DDPM ancestral sampling, DDIM (any eta), DDIM inversion, and Euler / Euler-ancestral.

In the VE frame a DDIM step is ``y' = x0 + sigma' * (y - x0) / sigma``: Euler's method on the
probability-flow ODE ``dy/dsigma = (y - D(y, sigma)) / sigma`` (Karras et al. 2022, Sec. 3), and
the same step as flow-matching Euler in the rectified-flow frame. So Euler is DDIM with eta=0 and
Euler-ancestral is DDIM with eta; both are defined here once.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from torch import Tensor

from .._utils import GeneratorLike, check_choice, randn_like
from ._common import Callback, DenoiserFn, ancestral_split, denoise, notify, sigma_list


def sample_ddim(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, s_noise: float = 1.0,
                cond: Any = None, generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al. 2021a, eq. 12). ``eta=0`` is deterministic; ``eta=1`` is DDPM ancestral
    sampling with the posterior ("small") variance; ``s_noise`` scales the fresh noise."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        x0 = denoise(denoiser, x, s[i], cond, i)
        down, up = ancestral_split(s[i], s[i + 1], eta)
        x = x0 + (down / s[i]) * (x - x0)
        if up > 0:
            x = x + randn_like(x, generator) * (s_noise * up)
        notify(callback, i, x, s[i], s[i + 1], x0)
    return x


def sample_euler(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 1 without the correction); it is
    exactly :func:`sample_ddim` with ``eta=0``."""
    return sample_ddim(denoiser, x, sigmas, eta=0.0, **kwargs)


def sample_euler_ancestral(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, eta: float = 1.0,
                           **kwargs: Any) -> Tensor:
    """Euler-ancestral (k-diffusion): an Euler step to ``sigma_down`` plus noise ``sigma_up``; it is
    exactly :func:`sample_ddim` with the same ``eta``."""
    return sample_ddim(denoiser, x, sigmas, eta=eta, **kwargs)


def sample_ddpm(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *,
                variance: Literal["small", "large"] = "small", cond: Any = None,
                generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7).

    ``variance="small"`` is the posterior variance beta-tilde; ``"large"`` is beta_t (for a VP
    process, where ``alpha^2 = 1 / (1 + sigma_ve^2)``). No noise is added on the last step to 0.
    """
    check_choice("variance", variance, ("small", "large"))
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sig, nxt = s[i], s[i + 1]
        x0 = denoise(denoiser, x, sig, cond, i)
        x = x0 + (nxt**2 / sig**2) * (x - x0)  # posterior mean, VE frame
        if nxt > 0:
            if variance == "small":
                var = nxt**2 * (sig**2 - nxt**2) / sig**2
            else:  # native beta_t = 1 - (alpha_t / alpha_s)^2 of a VP process, divided by alpha_s^2
                var = (1 + nxt**2) / (1 + sig**2) * (sig**2 - nxt**2)
            x = x + randn_like(x, generator) * math.sqrt(var)
        notify(callback, i, x, sig, nxt, x0)
    return x


def sample_ddim_inversion(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                          callback: Callback | None = None) -> Tensor:
    """Deterministic DDIM run backwards (Song et al. 2021a, Sec. 4.3; Dhariwal & Nichol 2021, App. F):
    from clean ``x`` at ``sigmas[0] > 0`` up a strictly increasing grid, returning the latent."""
    s = sigma_list(sigmas, increasing=True)
    if s[0] <= 0:
        raise ValueError("DDIM inversion starts at a noise level > 0 (the denoiser is undefined at 0)")
    for i in range(len(s) - 1):
        x0 = denoise(denoiser, x, s[i], cond, i)
        x = x0 + (s[i + 1] / s[i]) * (x - x0)
        notify(callback, i, x, s[i], s[i + 1], x0)
    return x
