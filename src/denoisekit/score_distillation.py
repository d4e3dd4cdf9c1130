"""Score distillation: losses whose gradient in a rendered image ``x`` is a diffusion model's update.

Each object is ``loss(x (B, C, H, W), cond) -> scalar`` with ``d loss / d x`` equal to the method's
update (the network's Jacobian is never back-propagated: Poole et al. 2023, eq. 2-3), so any
differentiable parameterisation of ``x`` (pixels, a shapes renderer, a volume renderer, a decoder) is
optimised by ``loss.backward()``. All work in the VE frame of :mod:`denoisekit.denoiser`
(``y = x + sigma eps``, ``eps_hat = (y - x0_hat) / sigma``), with classifier-free guidance through
:class:`~denoisekit.guidance.ClassifierFreeGuidance`.

======  ========================================================  ====================================
method  update ``d loss / d x``                                    paper
======  ========================================================  ====================================
SDS     ``w(sigma) (eps_hat(x + sigma eps, c) - eps)``             Poole et al. 2023 (DreamFusion), eq. 3
PDS     ``w(sigma) (z_tgt - z_src)``: posterior latents of target  Koo et al. 2024, eq. 9-11
        and source with shared noise (``z`` below)
VSD     ``w(sigma) (eps_hat(y, c) - eps_phi(y, c))``, ``eps_phi``  Wang et al. 2023 (ProlificDreamer),
        a particle denoiser (LoRA) fitted to the current ``x``    eq. 7-9 and Algorithm 1
======  ========================================================  ====================================

``sigma`` is drawn log-uniformly in ``sigma_range`` (VE-frame), one per example. Weightings ``w``:
``"uniform"`` (1), ``"sigma"`` (``sigma``: the update becomes ``x``-space, ``x - x0_hat`` for SDS) and
``"snr"`` (``sigma^2 / (1 + sigma^2)``: DreamFusion's ``w(t) = sigma_t^2`` of a variance-preserving
model with ``sigma_data = 1``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ._utils import append_dims, check_choice
from .denoiser import DenoiserFn
from .guidance import ClassifierFreeGuidance

Weighting = Literal["uniform", "sigma", "snr"]
WEIGHTINGS = ("uniform", "sigma", "snr")


def weight(sigma: Tensor, weighting: Weighting) -> Tensor:
    """``w(sigma)`` of the module docstring, ``(B,)``."""
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "uniform":
        return torch.ones_like(sigma)
    if weighting == "sigma":
        return sigma
    return sigma**2 / (1 + sigma**2)


class ScoreDistillation:
    """Shared parts: the guided denoiser, the noise-level range, the weighting and the random draws.

    - ``denoiser``: any denoiser of the contract (a loaded run's ``model.denoiser``);
    - ``sigma_range``: ``(lo, hi)`` VE-frame noise levels (DreamFusion's ``t ~ U(0.02, 0.98)``);
    - ``cfg_scale``: classifier-free guidance ``s`` (DreamFusion uses 100 on Imagen; small models want less);
    - ``generator``: the source of ``sigma`` and ``eps``, so that a loss is reproducible.
    """

    def __init__(self, denoiser: DenoiserFn, *, sigma_range: tuple[float, float] = (0.05, 2.0),
                 weighting: Weighting = "snr", cfg_scale: float = 3.0, null_label: int | None = None,
                 generator: torch.Generator | None = None):
        lo, hi = (float(v) for v in sigma_range)
        if not 0 < lo <= hi or not math.isfinite(hi):
            raise ValueError(f"sigma_range must be (lo, hi) with 0 < lo <= hi, got {sigma_range}")
        check_choice("weighting", weighting, WEIGHTINGS)
        self.denoiser = ClassifierFreeGuidance(denoiser, cfg_scale, null_label)
        self.sigma_range, self.weighting, self.generator = (lo, hi), weighting, generator

    def draw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``sigma (B,)`` log-uniform in the range and ``eps`` like ``x``."""
        lo, hi = self.sigma_range
        u = torch.rand(x.shape[0], generator=self.generator, dtype=torch.float64)
        sigma = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).to(x.device, x.dtype)
        eps = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        return sigma, eps

    @torch.no_grad()
    def eps_hat(self, y: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """The guided model's noise prediction ``(y - x0_hat) / sigma``."""
        return (y - self.denoiser(y, sigma, cond)) / append_dims(sigma, y.ndim)

    @staticmethod
    def surrogate(x: Tensor, update: Tensor) -> Tensor:
        """A scalar whose gradient in ``x`` is ``update`` (the stop-gradient trick of DreamFusion's code)."""
        return (x * update.detach()).sum()


class SDS(ScoreDistillation):
    """Score distillation sampling (Poole et al. 2023, eq. 3): the update is
    ``w(sigma) (eps_hat(x + sigma eps, c) - eps)``, the denoising loss's gradient without the U-Net Jacobian.
    ``last_update`` keeps the last update for inspection and tests."""

    last_update: Tensor | None = None

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        sigma, eps = self.draw(x)
        y = x.detach() + append_dims(sigma, x.ndim) * eps
        update = append_dims(weight(sigma, self.weighting), x.ndim) * (self.eps_hat(y, sigma, cond) - eps)
        self.last_update = update
        return self.surrogate(x, update)


class PDS(ScoreDistillation):
    """Posterior distillation sampling (Koo et al. 2024): edit ``x`` toward ``cond`` while matching the
    stochastic latents of the source ``(source, source_cond)``.

    With shared noises, ``x_t = x0 + sigma_t eps_t`` and the VE posterior sample ``x_s = mu(x_t, x0) +
    std eps_s`` (``sigma_s = step_ratio sigma_t``, ``r = sigma_s^2 / sigma_t^2``, ``mu(x_t, x0) = x0 + r (x_t -
    x0)``, ``std = sigma_s sqrt(1 - r)``), the latent ``z = (x_s - mu(x_t, x0_hat(x_t, c))) / std`` is
    ``(1 - r) (x0 - x0_hat) / std + eps_s``; the update ``w (z_tgt - z_src)`` (their eq. 11) is then
    ``w (1 - r) / std ((x - x0_hat_tgt) - (source - x0_hat_src))``: the shared ``eps_s`` cancels, so the
    source with its own prompt gets exactly zero update."""

    last_update: Tensor | None = None

    def __init__(self, denoiser: DenoiserFn, source: Tensor, source_cond: Any, *, step_ratio: float = 0.8,
                 **options: Any):
        super().__init__(denoiser, **options)
        if not 0 < step_ratio < 1:
            raise ValueError(f"step_ratio (sigma_s / sigma_t) must be in (0, 1), got {step_ratio}")
        self.source, self.source_cond, self.step_ratio = source.detach(), source_cond, float(step_ratio)

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        if x.shape != self.source.shape:
            raise ValueError(f"PDS: x is {tuple(x.shape)} but the source is {tuple(self.source.shape)}")
        sigma, eps = self.draw(x)
        s = append_dims(sigma, x.ndim)
        src = self.source.to(x)
        with torch.no_grad():
            x0_tgt = self.denoiser(x.detach() + s * eps, sigma, cond)
            x0_src = self.denoiser(src + s * eps, sigma, self.source_cond)
        r = self.step_ratio**2
        coef = (1 - r) / (self.step_ratio * s * math.sqrt(1 - r))
        update = append_dims(weight(sigma, self.weighting), x.ndim) * coef * ((x.detach() - x0_tgt) - (src - x0_src))
        self.last_update = update
        return self.surrogate(x, update)


class VSD(ScoreDistillation):
    """Variational score distillation (Wang et al. 2023, eq. 9): the update is ``w (eps_hat(y, c) -
    eps_phi(y, c))`` with ``eps_phi`` a particle denoiser (the pretrained one plus a LoRA, see
    :func:`denoisekit.models.lora.add_lora`) that :meth:`particle_loss` fits to the current renders
    (Algorithm 1: one step of each per iteration). At ``eps_phi = eps`` it is SDS."""

    last_update: Tensor | None = None

    def __init__(self, denoiser: DenoiserFn, particle: DenoiserFn, **options: Any):
        super().__init__(denoiser, **options)
        self.particle = particle

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        sigma, eps = self.draw(x)
        s = append_dims(sigma, x.ndim)
        y = x.detach() + s * eps
        with torch.no_grad():
            eps_phi = (y - self.particle(y, sigma, cond)) / s
        update = append_dims(weight(sigma, self.weighting), x.ndim) * (self.eps_hat(y, sigma, cond) - eps_phi)
        self.last_update = update
        return self.surrogate(x, update)

    def particle_loss(self, x: Tensor, cond: Any = None) -> Tensor:
        """The particle denoiser's denoising loss on the current (detached) renders: eps-MSE,
        ``|x0_phi(y) - x|^2 / sigma^2``, averaged; its gradient trains the LoRA only."""
        sigma, eps = self.draw(x)
        s = append_dims(sigma, x.ndim)
        x = x.detach()
        return (((self.particle(x + s * eps, sigma, cond) - x) / s) ** 2).mean()
