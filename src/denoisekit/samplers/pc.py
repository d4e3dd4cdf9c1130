"""Predictor-corrector sampling (Song et al. 2021b, Algorithms 2-3): an ancestral predictor step,
then Langevin corrector steps at the new noise level with the step size set by a target SNR."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from .._utils import GeneratorLike, check_choice, randn_like
from ._common import Callback, DenoiserFn, ancestral_split, denoise, notify, sigma_list


def langevin_correct(denoiser: DenoiserFn, x: Tensor, sigma: float, *, snr: float, n_steps: int,
                     step_size: Literal["expected", "batch"], cond: Any, generator: GeneratorLike,
                     step: int) -> Tensor:
    """``n_steps`` of Langevin MCMC on ``p_sigma``: ``x += eps * score + sqrt(2 eps) z``.

    ``eps = 2 (snr ||z|| / ||score||)^2`` (Song et al. 2021b, Alg. 4). ``"batch"`` uses the norms
    averaged over the batch, as their code does; ``"expected"`` uses their expectations,
    ``||z||^2 = D`` and ``||score||^2 = D / sigma^2``, giving ``eps = 2 snr^2 sigma^2``: the same in
    high dimension, independent of the batch, and stable when one sample's score is near 0.
    """
    for _ in range(n_steps):
        score = (denoise(denoiser, x, sigma, cond, step) - x) / sigma**2
        z = randn_like(x, generator)
        if step_size == "expected":
            eps = 2 * (snr * sigma) ** 2
        else:
            ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
            eps = float(2 * (snr * ratio) ** 2)
        x = x + eps * score + (2 * eps) ** 0.5 * z
    return x


def sample_pc(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, snr: float = 0.16, corrector_steps: int = 1,
              step_size: Literal["expected", "batch"] = "expected", cond: Any = None,
              generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Predictor-corrector: ancestral (reverse-diffusion) predictor, then Langevin corrector steps
    with target ``snr`` (Song et al. use 0.16 for VE and 0.01 for VP models). NFE per step is
    ``1 + corrector_steps``; there is no corrector after the final step to 0."""
    check_choice("step_size", step_size, ("expected", "batch"))
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        x0 = denoise(denoiser, x, s[i], cond, i)
        down, up = ancestral_split(s[i], s[i + 1], 1.0)
        x = x0 + (down / s[i]) * (x - x0)
        if up > 0:
            x = x + randn_like(x, generator) * up
        if s[i + 1] > 0 and corrector_steps > 0:
            x = langevin_correct(denoiser, x, s[i + 1], snr=snr, n_steps=corrector_steps, step_size=step_size,
                                 cond=cond, generator=generator, step=i)
        notify(callback, i, x, s[i], s[i + 1], x0)
    return x
