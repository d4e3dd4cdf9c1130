"""Noising processes ``x_t = alpha(t) * x0 + sigma(t) * eps`` for continuous ``t`` in [0, 1].

Every diffusion or flow model is one of these (Karras et al. 2022, Sec. 2). Samplers never see a
process: they work in the scaled "VE" frame ``y = x / alpha`` with ``sigma_ve = sigma / alpha``,
where every process is the same ODE. A process only says how its own time and scaling map to that
frame. All arithmetic is float64; callers cast at use.

Notation (Kingma et al. 2021): ``log_snr = lambda = log(alpha^2 / sigma^2) = -2 log(sigma_ve)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ._utils import lookup

#: Processes whose alpha reaches 0 (flow at t=1, cosine, sigmoid, zero-terminal-SNR) would put the
#: start of sampling at sigma_ve = inf. They stop at this sigma_ve instead (log-SNR ~ -18.4), where
#: the marginal differs from pure noise by 1e-4 of the data: far below any sampler's error.
SIGMA_VE_CAP = 1e4


def _f64(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class Process:
    """Base class. Subclasses define ``alpha``, ``sigma`` and, where closed-form, ``t_from_log_snr``.

    ``t_min``/``t_max`` bound the times a schedule uses by default; ``sigma_min``/``sigma_max`` are
    the matching VE-frame noise levels.
    """

    name: str = "process"
    t_min: float = 0.0
    t_max: float = 1.0
    #: Native scale of the prior: "vp" draws x_T ~ N(0, 1) (y = eps * sqrt(1 + sigma_ve^2)), the
    #: others draw y = eps * sigma_ve as EDM, k-diffusion and flow matching do.
    prior: Literal["vp", "ve"] = "ve"

    def alpha(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def log_snr(self, t: Tensor | float) -> Tensor:
        t = _f64(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def sigma_ve(self, t: Tensor | float) -> Tensor:
        t = _f64(t)
        return self.sigma(t) / self.alpha(t)

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """Inverse of :meth:`log_snr` (decreasing in t). Generic bisection; subclasses override."""
        lam = _f64(log_snr)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too clean: move right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def t_from_sigma(self, sigma_ve: Tensor | float) -> Tensor:
        """Time at which the VE-frame noise level equals ``sigma_ve``."""
        return self.t_from_log_snr(-2.0 * torch.log(_f64(sigma_ve)))

    def alpha_sigma_from_sigma_ve(self, sigma_ve: Tensor | float) -> tuple[Tensor, Tensor]:
        """Native ``(alpha, sigma)`` at VE noise ``sigma_ve``: the scaling a network's input needs."""
        t = self.t_from_sigma(sigma_ve)
        return self.alpha(t), self.sigma(t)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_ve(self.t_min))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_ve(self.t_max))

    def model_time(self, t: Tensor) -> Tensor:
        """The time value a network is given (``t``; discrete processes give the step index)."""
        return _f64(t)

    def derivatives(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(d alpha / dt, d sigma / dt)`` by autograd in float64 (flow-velocity targets need them)."""
        t = _f64(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            a, s = self.alpha(t) + 0 * t, self.sigma(t) + 0 * t  # + 0*t: constants still get a graph
            da = torch.autograd.grad(a.sum(), t, retain_graph=True)[0]
            ds = torch.autograd.grad(s.sum(), t)[0]
        return da.detach(), ds.detach()

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` in the native frame, for a ``(B,)`` vector of times."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = self.alpha(t).to(x0).reshape(shape)
        s = self.sigma(t).to(x0).reshape(shape)
        return a * x0 + s * eps

    def prior_std(self, sigma_ve: Tensor | float) -> Tensor:
        """Std of the VE-frame start point ``y_T`` at noise ``sigma_ve`` (see :attr:`prior`)."""
        s = _f64(sigma_ve)
        return torch.sqrt(1.0 + s**2) if self.prior == "vp" else s

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class DiscreteDDPM(Process):
    """DDPM's discrete chain (Ho et al. 2020): ``N`` steps of betas, ``alphas_cumprod`` exactly as DDPM.

    Step index ``i`` in ``0..N-1`` sits at ``t = i / (N - 1)``; between steps log-SNR is linear in the
    index, as k-diffusion's discrete wrappers do, so fractional steps are well defined.
    ``rescale_zero_snr`` applies Algorithm 1 of Lin et al. 2023 (terminal SNR = 0); the last step is
    then capped at :data:`SIGMA_VE_CAP`, as diffusers caps it at alpha_bar = 2^-24.
    """

    name = "ddpm"
    prior = "vp"

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: Literal["linear", "scaled_linear", "cosine"] = "linear",
                 rescale_zero_snr: bool = False):
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {num_steps}")
        self.num_steps, self.beta_start, self.beta_end = num_steps, beta_start, beta_end
        self.beta_schedule, self.rescale_zero_snr = beta_schedule, rescale_zero_snr
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":  # Stable Diffusion's schedule
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
        elif beta_schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999
            f = lambda u: torch.cos((u / num_steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            i = torch.arange(num_steps, dtype=torch.float64)
            betas = torch.clamp(1 - f(i + 1) / f(i), max=0.999)
        else:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}; allowed: cosine, linear, scaled_linear")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if rescale_zero_snr:
            sqrt_ab = alphas_cumprod.sqrt()
            a0, aT = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
            sqrt_ab = (sqrt_ab - aT) * a0 / (a0 - aT)
            alphas_cumprod = sqrt_ab**2
            alphas_cumprod[-1] = 1.0 / (1.0 + SIGMA_VE_CAP**2)
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self._log_snr = torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)  # decreasing in i

    def _index(self, t: Tensor) -> Tensor:
        return torch.clamp(_f64(t), 0.0, 1.0) * (self.num_steps - 1)

    def log_snr(self, t: Tensor | float) -> Tensor:
        idx = self._index(_f64(t))
        lo = torch.clamp(idx.floor().long(), 0, self.num_steps - 2)
        w = idx - lo
        lam = self._log_snr.to(idx.device)
        return (1 - w) * lam[lo] + w * lam[lo + 1]

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.sigmoid(self.log_snr(t)).sqrt()

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        lam = _f64(log_snr)
        table = -self._log_snr.to(lam.device)  # increasing
        x = torch.clamp(-lam, table[0], table[-1])
        hi = torch.clamp(torch.searchsorted(table, x.contiguous()), 1, self.num_steps - 1)
        lo = hi - 1
        w = (x - table[lo]) / (table[hi] - table[lo])
        return (lo + w) / (self.num_steps - 1)

    def model_time(self, t: Tensor) -> Tensor:
        return self._index(t)

    def timestep_sigmas(self, indices: Tensor) -> Tensor:
        """VE noise levels of integer step indices (diffusers' ``timesteps``)."""
        ab = self.alphas_cumprod[torch.as_tensor(indices).long()]
        return ((1 - ab) / ab).sqrt()


class VPLinear(Process):
    """Continuous VP SDE with linear beta(t) (Song et al. 2021, eq. 11); DDPM's continuum limit."""

    name = "vp_linear"
    prior = "vp"
    t_min = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.exp(0.5 * self._log_alpha_bar(_f64(t)))

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(-torch.expm1(self._log_alpha_bar(_f64(t))))

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        c = -torch.nn.functional.logsigmoid(_f64(log_snr))  # -log alpha_bar
        d = self.beta_max - self.beta_min
        return 2 * c / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * c))


class _AlphaBarProcess(Process):
    """VP process given by ``alpha_bar(t)`` and its inverse; alpha reaches 0 at t=1, so t_max is capped."""

    prior = "vp"

    def _alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_from_alpha_bar(self, ab: Tensor) -> Tensor:
        raise NotImplementedError

    def _set_range(self) -> None:
        self.t_min = float(self.t_from_sigma(1e-3))
        self.t_max = float(self.t_from_sigma(SIGMA_VE_CAP))

    def alpha(self, t: Tensor | float) -> Tensor:
        return self._alpha_bar(_f64(t)).clamp_min(0).sqrt()

    def sigma(self, t: Tensor | float) -> Tensor:
        return (1 - self._alpha_bar(_f64(t))).clamp_min(0).sqrt()

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        return self._t_from_alpha_bar(torch.sigmoid(_f64(log_snr)))


class VPCosine(_AlphaBarProcess):
    """Cosine schedule, continuous (Nichol & Dhariwal 2021, eq. 17): alpha_bar = f(t)/f(0)."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008):
        self.s = s
        self._set_range()

    def _angle(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * math.pi / 2

    def _alpha_bar(self, t: Tensor) -> Tensor:
        return (torch.cos(self._angle(t)) / math.cos(self._angle(_f64(0.0)))) ** 2

    def _t_from_alpha_bar(self, ab: Tensor) -> Tensor:
        angle = torch.arccos(ab.sqrt() * math.cos(self._angle(_f64(0.0))))
        return angle * 2 / math.pi * (1 + self.s) - self.s


class VPSigmoid(_AlphaBarProcess):
    """Sigmoid schedule (Chen 2023, "On the importance of noise scheduling", Algorithm 1)."""

    name = "vp_sigmoid"

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
        if not end > start or tau <= 0:
            raise ValueError(f"vp_sigmoid needs end > start and tau > 0, got start={start}, end={end}, tau={tau}")
        self.start, self.end, self.tau = start, end, tau
        self._v0, self._v1 = 1 / (1 + math.exp(-start / tau)), 1 / (1 + math.exp(-end / tau))
        self._set_range()

    def _alpha_bar(self, t: Tensor) -> Tensor:
        v = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        return (self._v1 - v) / (self._v1 - self._v0)

    def _t_from_alpha_bar(self, ab: Tensor) -> Tensor:
        v = (self._v1 - ab * (self._v1 - self._v0)).clamp(1e-300, 1 - 1e-16)
        return (self.tau * torch.logit(v) - self.start) / (self.end - self.start)


class VE(Process):
    """Variance-exploding SDE (Song et al. 2021, eq. 9): alpha = 1, sigma geometric in t."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"ve needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_lo, self.sigma_hi = sigma_min, sigma_max

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(_f64(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        return self.sigma_lo * (self.sigma_hi / self.sigma_lo) ** _f64(t)

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        sigma = torch.exp(-0.5 * _f64(log_snr))
        return torch.log(sigma / self.sigma_lo) / math.log(self.sigma_hi / self.sigma_lo)


class EDM(Process):
    """EDM (Karras et al. 2022): alpha = 1, and uniform t in [0, 1] is their rho-spaced sigma grid
    (eq. 5), so ``sigma(t) = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho``."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"edm needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_lo, self.sigma_hi, self.rho, self.sigma_data = sigma_min, sigma_max, rho, sigma_data

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(_f64(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        a, b = self.sigma_lo ** (1 / self.rho), self.sigma_hi ** (1 / self.rho)
        return (a + _f64(t) * (b - a)) ** self.rho

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        a, b = self.sigma_lo ** (1 / self.rho), self.sigma_hi ** (1 / self.rho)
        return (torch.exp(-0.5 * _f64(log_snr) / self.rho) - a) / (b - a)


class RectifiedFlow(Process):
    """Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022): alpha = 1 - t,
    sigma = sigma_min + (1 - sigma_min) t.

    ``sigma_min = 0`` (the default) is rectified flow's straight path between data (t = 0) and noise
    (t = 1). ``sigma_min > 0`` is the optimal-transport conditional path of Lipman et al. 2022 (eq. 20,
    OT-CFM as torchcfm calls it), written in this library's time direction: the path starts from the
    data blurred by ``sigma_min`` and its velocity target is ``(1 - sigma_min) eps - x0`` (eq. 23). Its
    lowest noise level is ``sigma_min`` itself, at t = 0.
    """

    name = "flow"
    t_max = SIGMA_VE_CAP / (1 + SIGMA_VE_CAP)

    def __init__(self, sigma_min: float = 0.0):
        if not (isinstance(sigma_min, (int, float)) and 0 <= sigma_min < 1):
            raise ValueError(f"flow needs 0 <= sigma_min < 1, got {sigma_min!r}")
        self.sigma_floor = float(sigma_min)
        # Without a floor t = 0 is noiseless (sigma_ve = 0, log-SNR infinite): schedules stop at 1e-3.
        self.t_min = 0.0 if self.sigma_floor > 0 else 1e-3

    def alpha(self, t: Tensor | float) -> Tensor:
        return 1 - _f64(t)

    def sigma(self, t: Tensor | float) -> Tensor:
        if self.sigma_floor == 0:
            return _f64(t).clone()  # bit-identical to the plain path
        return self.sigma_floor + (1 - self.sigma_floor) * _f64(t)

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        # sigma_ve = r solves r (1 - t) = s0 + (1 - s0) t: t = (r - s0) / (r + 1 - s0); below s0 it is t = 0.
        if self.sigma_floor == 0:
            return torch.sigmoid(-0.5 * _f64(log_snr))  # sigma_ve / (1 + sigma_ve)
        r, s0 = torch.exp(-0.5 * _f64(log_snr)), self.sigma_floor
        return ((r - s0) / (r + 1 - s0)).clamp(min=0.0)


PROCESSES: dict[str, type[Process]] = {
    "ddpm": DiscreteDDPM,
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "vp_sigmoid": VPSigmoid,
    "ve": VE,
    "edm": EDM,
    "flow": RectifiedFlow,
}


def get_process(name: str, **kwargs) -> Process:
    """Build a process by registry name, e.g. ``get_process("ddpm", rescale_zero_snr=True)``."""
    return lookup("process", PROCESSES, name)(**kwargs)


def start_std(sigma_max: float, process: Process | None = None, prior_std: float | None = None) -> float:
    """Std of the VE-frame prior ``N(0, std^2 I)`` at ``sigma_max``: ``prior_std`` if given, else the
    process's (:meth:`Process.prior_std`, ``sqrt(1 + sigma^2)`` for VP), else ``sigma_max`` (VE)."""
    if process is not None and prior_std is not None:
        raise ValueError("give either process or prior_std, not both")
    if prior_std is not None:
        if not prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        return float(prior_std)
    if process is not None:
        return float(process.prior_std(sigma_max))
    return float(sigma_max)
