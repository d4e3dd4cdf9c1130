"""Posterior sampling for linear inverse problems ``y = A x0 + sigma_y eps`` with a trained prior.

Two denoiser wrappers, so every sampler gets them (``DenoiserWrapper`` keeps the process):

- :class:`DPS` — diffusion posterior sampling (Chung et al. 2023, Algorithm 1): the denoiser's estimate is
  pulled down the gradient of ``||y - A(x0_hat(x_t))||`` taken *through the denoiser* (one backward pass
  per evaluation).
- :class:`DiffPIR` — plug-and-play image restoration with diffusion (Zhu et al. 2023, Algorithm 1): the
  estimate is replaced by the solution of the data sub-problem ``argmin ||y - A x||^2 + rho ||x - x0_hat||^2``,
  ``rho = lam sigma_y^2 / sigma^2`` (their eq. 13), in closed form; no gradient through the network. The
  sampler's stochasticity (DDIM ``eta``) plays DiffPIR's ``zeta``.

and one sampling loop over the Euler sampler, :func:`daps`: decoupled annealing posterior sampling
(Zhang et al. 2025, Algorithm 1).

Each takes a batch of measurements of the same size as the batch it denoises (one call per batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._utils import GeneratorLike, as_batch, randn, randn_like
from ..data.operators import LinearOperator
from ..denoiser import DenoiserFn, DenoiserWrapper
from ..samplers import sample_euler
from ..schedules import get_sigmas_karras


class DPS(DenoiserWrapper):
    """``x0_hat(y) - zeta * grad_y ||meas - A(x0_hat(y))||`` (Chung et al. 2023, Algorithm 1, Gaussian noise).

    DPS's step ``zeta_i grad ||meas - A x0_hat||^2`` with ``zeta_i = zeta' / ||meas - A x0_hat||`` is the gradient
    of the norm; here it moves the denoiser's estimate, so a sampler's step from ``sigma`` to ``sigma'``
    applies it in proportion to ``log(sigma / sigma')`` and ``zeta`` does not depend on the number of steps
    (DPS's own ``zeta'`` is per DDPM step of a 1000-step chain). The gradient runs through the wrapped
    denoiser under ``torch.enable_grad``, also when sampling is under ``no_grad``.
    """

    def __init__(self, inner: DenoiserFn, operator: LinearOperator, measurement: Tensor, zeta: float = 1.0):
        super().__init__(inner, require_process=False)
        self.operator, self.measurement, self.zeta = operator, measurement, float(zeta)

    def forward(self, y: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        with torch.enable_grad():
            yy = y.detach().requires_grad_(True)
            x0 = self.inner(yy, sigma, cond)
            resid = (self.measurement.to(x0) - self.operator(x0)).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(resid.sum(), yy)
        return x0.detach() - self.zeta * grad


class DiffPIR(DenoiserWrapper):
    """``argmin_x ||meas - A x||^2 + rho ||x - x0_hat(y)||^2`` with ``rho = lam sigma_y^2 / sigma^2``: the
    data sub-problem of DiffPIR (Zhu et al. 2023, Algorithm 1 step 4, eq. 13), solved by the operator's
    ``prox``. Sample with DDIM ``eta`` in ``[0, 1]`` (DiffPIR's ``zeta``)."""

    def __init__(self, inner: DenoiserFn, operator: LinearOperator, measurement: Tensor, sigma_y: float,
                 lam: float = 1.0):
        super().__init__(inner, require_process=False)
        self.operator, self.measurement = operator, measurement
        self.sigma_y, self.lam = float(sigma_y), float(lam)

    def forward(self, y: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        x0 = self.inner(y, sigma, cond)
        rho = self.lam * self.sigma_y**2 / as_batch(sigma, y).to(y.dtype).clamp(min=1e-12) ** 2
        return self.operator.prox(x0, self.measurement.to(x0), rho)


def daps(denoiser: DenoiserFn, operator: LinearOperator, measurement: Tensor, shape: tuple[int, ...], *,
         sigma_y: float, annealing_steps: int = 25, ode_steps: int = 4, sigma_max: float = 80.0,
         sigma_min: float = 0.01, r_scale: float = 1.0, cond: Any = None, generator: GeneratorLike = None,
         prior_std: float | None = None, device: Any = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Decoupled annealing posterior sampling (Zhang et al. 2025, "Improving Diffusion Inverse Problem Solving
    with Decoupled Noise Annealing", Algorithm 1) for a linear operator with Gaussian noise: ``(B, ...)``.

    On a Karras grid of ``annealing_steps`` levels ``sigma_i`` from ``sigma_max`` to ``sigma_min``: solve the
    probability-flow ODE from ``x_i`` to 0 with ``ode_steps`` Euler steps (``x0_hat``); draw
    ``x0 ~ p(x0 | x0_hat, y)`` with ``p(x0 | x_i) ~ N(x0_hat, r_i^2 I)``, ``r_i = r_scale sigma_i`` (their
    Sec. 4.2); then ``x_{i+1} = x0 + sigma_{i+1} eps``. The paper draws ``x0`` by Langevin dynamics; for a
    linear operator that Gaussian is sampled exactly by perturb-and-MAP (Papandreou & Yuille 2010):
    ``prox(x0_hat + r eps1, y + sigma_y eps2, sigma_y^2 / r^2)``. NFE ``annealing_steps * ode_steps``;
    returns the last ``x0``.
    """
    levels = get_sigmas_karras(annealing_steps, sigma_min, sigma_max)[:-1].tolist()
    top = prior_std if prior_std is not None else levels[0]
    x = randn(shape, generator, device=device, dtype=dtype) * top
    meas = measurement.to(device=x.device, dtype=dtype)
    x0 = x
    for i, s in enumerate(levels):
        grid = get_sigmas_karras(ode_steps, min(sigma_min, s) / 2, s)  # s ... -> 0
        x0_hat = sample_euler(denoiser, x, grid, cond=cond)
        r = r_scale * s
        rho = sigma_y**2 / r**2 if sigma_y > 0 else 0.0
        x0 = operator.prox(x0_hat + r * randn_like(x0_hat, generator), meas + sigma_y * randn_like(meas, generator),
                           max(rho, 1e-10))
        nxt = levels[i + 1] if i + 1 < len(levels) else 0.0
        x = x0 + nxt * randn_like(x0, generator) if nxt > 0 else x0
    return x0
