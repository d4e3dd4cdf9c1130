"""Training losses: ``loss(denoiser, x0, cond) -> (B,)`` per-example denoising loss.

The objective is the network's own prediction (eps, x0, v, flow velocity, score or EDM's F, set on the
:class:`~denoisekit.prediction.Denoiser`); the loss chooses how noise levels are drawn and how they
are weighted. Weightings are defined on the x0 error and converted to the network's error with the
prediction's ``x0_mse_factor`` (its row of :data:`~denoisekit.prediction.PREDICTIONS`), so "min-SNR-5"
means the same thing for every prediction type (Hang et al. 2023, Sec. 3.4).

=============  ==============================================  ==========================================
weighting      weight on ``||x0_hat - x0||^2``                  source
=============  ==============================================  ==========================================
simple         (plain MSE of the network's own output)          Ho et al. 2020, eq. 14 (for eps)
snr            SNR                                              = simple eps loss, any prediction
min_snr        min(SNR, gamma)                                  Hang et al. 2023
soft_min_snr   SNR gamma / (SNR + gamma)                        Crowson et al. 2024 (HDiT), Sec. 3.4
edm            (sigma^2 + sigma_data^2) / (sigma sigma_data)^2  Karras et al. 2022, Table 1
=============  ==============================================  ==========================================

Noise levels: ``uniform`` in t (uniform step index for a discrete process), ``lognormal``
``ln sigma_ve ~ N(p_mean, p_std^2)`` (EDM), ``logit_normal`` ``t = sigmoid(N(m, s^2))`` (Esser et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from ._utils import GeneratorLike, check_choice, randn_like
from .prediction import Denoiser
from .process import DiscreteDDPM, Process

NoiseLevels = Literal["uniform", "lognormal", "logit_normal"]
Weighting = Literal["simple", "snr", "min_snr", "soft_min_snr", "edm"]
NOISE_LEVELS = ("uniform", "lognormal", "logit_normal")
WEIGHTINGS = ("simple", "snr", "min_snr", "soft_min_snr", "edm")


def _gen(generator: GeneratorLike) -> torch.Generator | None:
    return generator if isinstance(generator, torch.Generator) else None


def _draw(n: int, kind: str, process: Process | None, g: torch.Generator | None, device: Any) -> Tensor:
    """The raw random numbers of :func:`sample_times`: step indices, uniforms or standard normals."""
    if kind == "uniform" and isinstance(process, DiscreteDDPM):
        return torch.randint(0, process.num_steps, (n,), generator=g, device=device).to(torch.float64)
    if kind == "uniform":
        return torch.rand(n, generator=g, device=device, dtype=torch.float64)
    return torch.randn(n, generator=g, device=device, dtype=torch.float64)


def _raw(n: int, kind: str, process: Process | None, generator: GeneratorLike, device: Any) -> Tensor:
    """:func:`_draw` for ``n`` samples: from each sample's own generator when given one per sample."""
    if generator is not None and not isinstance(generator, torch.Generator):  # one generator per sample
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"got {len(gens)} generators for {n} samples")
        return torch.cat([_draw(1, kind, process, g, g.device) for g in gens]).to(device) if gens else \
            torch.zeros(0, dtype=torch.float64, device=device)
    g = _gen(generator)
    return _draw(n, kind, process, g, g.device if g is not None else device)


def uniforms(n: int, generator: GeneratorLike = None, device: Any = None) -> Tensor:
    """``n`` float64 uniforms in ``[0, 1)``, each from its own generator when given one per sample."""
    return _raw(n, "uniform", None, generator, device)


def sample_times(process: Process, n: int, kind: NoiseLevels = "uniform", *, p_mean: float = -1.2,
                 p_std: float = 1.2, generator: GeneratorLike = None, device: Any = None) -> Tensor:
    """``n`` training times (float64) drawn by ``kind`` and kept in ``[t_min, t_max]`` of the process.
    With one generator per sample each draws its own number; the map to times then runs once on the batch."""
    check_choice("noise level distribution", kind, NOISE_LEVELS)
    u = _raw(n, kind, process, generator, device)
    if kind == "uniform" and isinstance(process, DiscreteDDPM):
        t = u / (process.num_steps - 1)
    elif kind == "uniform":
        t = process.t_min + (process.t_max - process.t_min) * u
    elif kind == "lognormal":
        t = process.t_from_sigma(torch.exp(p_mean + p_std * u))
    else:
        t = torch.sigmoid(p_mean + p_std * u)
    return t.clamp(process.t_min, process.t_max).to(device)


@dataclass(frozen=True)
class DiffusionLoss:
    """The denoising loss of a :class:`Denoiser`: ``loss(denoiser, x0, cond=None, generator=None) -> (B,)``.

    ``DiffusionLoss()`` is DDPM's simple loss for an eps model; ``DiffusionLoss("lognormal", "edm")``
    is EDM's loss (Karras et al. 2022, eq. 2 with Table 1); ``DiffusionLoss(weighting="min_snr")``
    is min-SNR-5. ``p_mean``/``p_std`` parameterise the lognormal and logit-normal distributions
    (set ``p_mean=0, p_std=1`` for SD3's logit-normal).
    """

    noise_levels: NoiseLevels = "uniform"
    weighting: Weighting = "simple"
    gamma: float = 5.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        check_choice("noise level distribution", self.noise_levels, NOISE_LEVELS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        if self.gamma <= 0 or self.p_std <= 0:
            raise ValueError(f"gamma and p_std must be > 0, got gamma={self.gamma}, p_std={self.p_std}")

    def x0_weight(self, snr: Tensor, sigma_ve: Tensor, sigma_data: float) -> Tensor:
        """Weight on the x0 error at these noise levels (float64 ``(B,)``)."""
        if self.weighting == "snr":
            return snr
        if self.weighting == "min_snr":
            return torch.clamp(snr, max=self.gamma)
        if self.weighting == "soft_min_snr":
            return snr * self.gamma / (snr + self.gamma)
        return (sigma_ve**2 + sigma_data**2) / (sigma_ve * sigma_data) ** 2  # edm

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Any = None, generator: GeneratorLike = None, *,
                 teacher: Callable[..., Tensor] | None = None, eps: Tensor | None = None,
                 t: Tensor | None = None) -> Tensor:
        """``teacher(y, sigma, cond) -> x0_hat`` (a frozen VE-frame denoiser) replaces the data as the target:
        the network then regresses onto the teacher's denoiser at the same noisy point (distillation).
        ``eps`` (the noise paired with ``x0``: a coupling, as reflow trains on) and ``t`` ``(B,)`` replace the
        draws of the noise and of the times (then nothing is drawn from ``generator`` for them)."""
        if t is None:
            t = sample_times(denoiser.process, x0.shape[0], self.noise_levels, p_mean=self.p_mean,
                             p_std=self.p_std, generator=generator, device=x0.device)
        c = denoiser.coefficients(t)
        eps = randn_like(x0, generator) if eps is None else eps.to(x0)
        x_t = denoiser.process.add_noise(x0, eps, t)
        if teacher is not None:  # the teacher's (x0, eps) pair that is consistent with x_t
            a, s = (v.to(x_t).reshape(-1, *[1] * (x_t.ndim - 1)) for v in (c.alpha, c.sigma))
            with torch.no_grad():
                x0 = teacher(x_t / a, c.sigma_ve, cond).to(x_t)
            eps = (x_t - a * x0) / s
        out, rule = denoiser.predict(x_t, c, cond), denoiser.rule  # the prediction's row of the table
        target = rule.target(x0, eps, c)
        mse = (out.float() - target.float()).pow(2).flatten(1).mean(1)
        if self.weighting == "simple":
            return mse
        w = self.x0_weight((c.alpha / c.sigma) ** 2, c.sigma_ve, denoiser.sigma_data)
        return mse * (w / rule.x0_mse_factor(c)).to(mse)
