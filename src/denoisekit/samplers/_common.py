"""What every sampler shares: grid checks, the checked denoiser call, and the callback payload.

``DenoiserFn``, the contract every sampler takes, is :mod:`denoisekit.denoiser`'s; it is re-imported here.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..schedules import check_sigmas

Callback = Callable[[dict[str, Any]], None]


def sigma_list(sigmas: Tensor, *, increasing: bool = False) -> list[float]:
    """Validated grid as Python floats: step coefficients are computed in float64, cast at use."""
    return check_sigmas(sigmas, increasing=increasing).tolist()


def denoise(denoiser: DenoiserFn, x: Tensor, sigma: float | Tensor, cond: Any, step: int, *,
            sigma_to: float | None = None) -> Tensor:
    """Call the denoiser at one noise level (a float, or a 0-d tensor that gradients flow through); a NaN or
    inf in its output is an error naming the step. ``sigma_to``: the target level of a denoiser that takes one
    (:meth:`~denoisekit.prediction.Denoiser.forward`; MeanFlow)."""
    if isinstance(sigma, Tensor):
        s = sigma.to(torch.float64).expand(x.shape[0])
    else:
        s = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
    out = denoiser(x, s, cond) if sigma_to is None else denoiser(x, s, cond, sigma_to=torch.full_like(s, sigma_to))
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"denoiser returned NaN/inf at step {step} (sigma={float(sigma):.6g})")
    return out


def notify(callback: Callback | None, i: int, x: Tensor, sigma: float, sigma_next: float,
           denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)``: a step to ``sigma_next`` as a deterministic move to ``sigma_down``
    plus fresh noise of std ``sigma_up``; ``eta=1`` is DDPM's posterior (Song et al. 2021a, eq. 16)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up
