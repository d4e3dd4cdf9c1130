"""Parameterisations (a table) and the :class:`Denoiser` adapter.

A network predicts one of:

========  =====================================  =========================================
name      network output                          x0 from output (native frame x = a x0 + s eps)
========  =====================================  =========================================
eps       eps                                     (x - s eps) / a
x0        x0                                      x0
v         a_n eps - s_n x0 (Salimans & Ho 2022;   a_n x_n - s_n v, with r = sqrt(a^2 + s^2),
          a_n = a/r, s_n = s/r)                   x_n = x / r
flow      dx/dt = a' x0 + s' eps (flow matching)  (s' x - s u) / (s' a - s a')
score     grad log p = -eps / s                   (x + s^2 score) / a
edm       F of Karras et al. 2022, Table 1        c_skip y + c_out F, y = x / a, sigma = s / a
========  =====================================  =========================================

Each row is a :class:`PredictionRule` in :data:`PREDICTIONS`: x0 from the output, the training target,
the x0-MSE factor and, optionally, preconditioning (what the network is fed, and a time input it
requires). The adapter, the losses and config validation read only the table, so a new
parameterisation is one entry and nothing else::

    PREDICTIONS["mine"] = PredictionRule(
        x0=lambda out, x, c: ...,           # (network output, native x, Coefficients) -> x0_hat
        target=lambda x0, eps, c: ...,      # what the network should output at alpha x0 + sigma eps
        x0_mse_factor=lambda c: ...,        # k with ||out - target||^2 = k ||x0_hat - x0||^2, (B,) float64
        net_input=lambda x, c: ...,         # optional: the network's input (default: x itself)
        time_input="log_sigma")             # optional: a time input the entry requires

``x0`` and ``target`` must be inverses (``x0(target(x0, eps, c), x, c) == x0``) and ``x0_mse_factor``
the squared slope of ``out`` in ``x0_hat``; tests/test_prediction.py checks both for every entry of the
table, and that :data:`Prediction` (add the name there too, for typed callers) lists the same names.
``consistency`` (Song et al. 2023, Sec. 3 and App. C) is EDM's ``net_input`` and ``time_input`` with the
consistency model's ``c_skip`` / ``c_out``, exact at :data:`CONSISTENCY_SIGMA_MIN` (``x0 = y`` there).

:class:`Denoiser` turns any such network, ours or external, into the one contract every sampler,
guidance and loss uses (:mod:`denoisekit.denoiser`): ``denoiser(y, sigma, cond) -> x0_hat`` in the VE
frame ``y = x / alpha``, ``sigma = sigma_native / alpha``. :class:`Clock` is the map between that frame
and the network's ``(x, time)``. Example with a diffusers U-Net (it takes ``(x_t, timestep)``)::

    from denoisekit import Denoiser, get_process
    process = get_process("ddpm")                       # timesteps 0..999 as diffusers'
    denoiser = Denoiser(lambda x, t: unet(x, t).sample, process, "eps")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from ._utils import append_dims, as_batch, check_choice, lookup
from .process import Process

Prediction = Literal["eps", "x0", "v", "flow", "score", "edm", "consistency"]
TimeInput = Literal["model", "t", "log_sigma"]
TIME_INPUTS: tuple[str, ...] = ("model", "t", "log_sigma")


class Coefficients:
    """Per-sample float64 coefficients of a process at VE noise ``sigma``: all ``(B,)`` tensors."""

    def __init__(self, process: Process, t: Tensor, sigma_data: float = 0.5):
        self.t = t
        self.alpha, self.sigma = process.alpha(t), process.sigma(t)
        self.sigma_ve = self.sigma / self.alpha
        self.sigma_data = sigma_data
        self._process = process
        self._derivs: tuple[Tensor, Tensor] | None = None

    @property
    def derivatives(self) -> tuple[Tensor, Tensor]:
        if self._derivs is None:
            self._derivs = self._process.derivatives(self.t)
        return self._derivs

    def edm(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` of Karras et al. 2022, Table 1 (VE-frame sigma)."""
        s, sd = self.sigma_ve, self.sigma_data
        norm = torch.sqrt(s**2 + sd**2)
        return sd**2 / norm**2, s * sd / norm, 1 / norm, torch.log(s) / 4


def _b(c: Tensor, x: Tensor) -> Tensor:
    return append_dims(c.to(device=x.device, dtype=x.dtype), x.ndim)


@dataclass(frozen=True)
class Clock:
    """The map between the VE frame ``(y, sigma)`` and a network's native ``(x = alpha y, time)``.

    ``time_input``: ``"model"`` is the process's own clock (``t``, or the step index 0..N-1 of a
    discrete process, as diffusers' U-Nets expect), ``"t"`` is t in [0, 1], ``"log_sigma"`` is
    ``log(sigma_ve) / 4`` (EDM's ``c_noise``, Karras et al. 2022, Table 1). A :class:`Denoiser` feeds its
    network by :attr:`Denoiser.clock`; a noisy classifier trained on the same ``x_t`` uses the same clock.
    """

    process: Process
    time_input: TimeInput = "model"

    def __post_init__(self) -> None:
        check_choice("time_input", self.time_input, TIME_INPUTS)

    def network_time(self, c: Coefficients) -> Tensor:
        """The time ``(B,)`` (float64) the network is given at the coefficients ``c``."""
        if self.time_input == "log_sigma":
            return torch.log(c.sigma_ve) / 4
        return self.process.model_time(c.t) if self.time_input == "model" else c.t

    def time(self, t: Tensor) -> Tensor:
        """The network time ``(B,)`` (float64) at process times ``t`` ``(B,)``."""
        return self.network_time(Coefficients(self.process, t))

    def native(self, y: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(x, time)`` a network gets for VE-frame ``y`` ``(B, ...)`` at VE noise ``sigma`` (scalar or
        ``(B,)``): ``x = alpha y`` and the ``(B,)`` time, both in ``y``'s dtype and device."""
        c = Coefficients(self.process, self.process.t_from_sigma(as_batch(sigma, y)))
        return y * _b(c.alpha, y), self.network_time(c).to(device=y.device, dtype=y.dtype)


@dataclass(frozen=True)
class PredictionRule:
    """One parameterisation: its x0, training target and x0-MSE factor, and optional preconditioning.

    ``x0(out, x, c)`` and ``target(x0, eps, c)`` work on native-frame tensors ``(B, ...)``;
    ``x0_mse_factor(c)`` is ``(B,)`` float64; ``net_input(x, c)`` (``None``: ``x``) is what the network is
    fed; ``time_input`` (``None``: the :class:`Denoiser`'s) a time input the parameterisation requires.
    """

    x0: Callable[[Tensor, Tensor, Coefficients], Tensor]
    target: Callable[[Tensor, Tensor, Coefficients], Tensor]
    x0_mse_factor: Callable[[Coefficients], Tensor]
    net_input: Callable[[Tensor, Coefficients], Tensor] | None = None
    time_input: TimeInput | None = None


def _v_x0(out: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    a, s = _b(c.alpha, x), _b(c.sigma, x)
    r = torch.sqrt(a**2 + s**2)
    return (a * x / r - s * out) / r


def _v_target(x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    a, s = _b(c.alpha, x0), _b(c.sigma, x0)
    r = torch.sqrt(a**2 + s**2)
    return (a * eps - s * x0) / r


def _flow_x0(out: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    a, s = _b(c.alpha, x), _b(c.sigma, x)
    da, ds = (_b(d, x) for d in c.derivatives)
    return (ds * x - s * out) / (ds * a - s * da)


def _flow_target(x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    da, ds = (_b(d, x0) for d in c.derivatives)
    return da * x0 + ds * eps


def _flow_factor(c: Coefficients) -> Tensor:
    da, ds = c.derivatives
    return ((ds * c.alpha - c.sigma * da) / c.sigma) ** 2


def _edm_x0(out: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    c_skip, c_out, _, _ = (_b(v, x) for v in c.edm())
    return c_skip * (x / _b(c.alpha, x)) + c_out * out


def _edm_target(x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    c_skip, c_out, _, _ = (_b(v, x0) for v in c.edm())
    return (x0 - c_skip * (x0 + _b(c.sigma_ve, x0) * eps)) / c_out


#: The smallest noise level of a consistency model, where ``f(y, sigma_min) = y`` (Song et al. 2023, Sec. 3: eps = 0.002).
CONSISTENCY_SIGMA_MIN = 0.002


def _cm_coefficients(c: Coefficients) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` of a consistency model (Song et al. 2023, App. C, eq. 12-13; VE-frame sigma):
    ``c_skip = sd^2 / ((s - s_min)^2 + sd^2)``, ``c_out = sd (s - s_min) / sqrt(sd^2 + s^2)``, so that
    ``c_skip(s_min) = 1`` and ``c_out(s_min) = 0``: the boundary condition holds exactly."""
    s, sd, m = c.sigma_ve, c.sigma_data, CONSISTENCY_SIGMA_MIN
    # a process's sigma -> t -> sigma round trip is off by ~1e-18: snap it, so the boundary holds bit-exactly
    d = torch.where(torch.isclose(s, torch.full_like(s, m), rtol=1e-9, atol=0.0), torch.zeros_like(s), s - m)
    return sd**2 / (d**2 + sd**2), sd * d / torch.sqrt(sd**2 + s**2)


def _cm_x0(out: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    c_skip, c_out = (_b(v, x) for v in _cm_coefficients(c))
    return c_skip * (x / _b(c.alpha, x)) + c_out * out


def _cm_target(x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    c_skip, c_out = (_b(v, x0) for v in _cm_coefficients(c))
    return (x0 - c_skip * (x0 + _b(c.sigma_ve, x0) * eps)) / c_out


PREDICTIONS: dict[str, PredictionRule] = {
    "eps": PredictionRule(
        x0=lambda out, x, c: (x - _b(c.sigma, x) * out) / _b(c.alpha, x),
        target=lambda x0, eps, c: eps,
        x0_mse_factor=lambda c: (c.alpha / c.sigma) ** 2),
    "x0": PredictionRule(
        x0=lambda out, x, c: out,
        target=lambda x0, eps, c: x0,
        x0_mse_factor=lambda c: torch.ones_like(c.alpha)),
    "v": PredictionRule(_v_x0, _v_target, lambda c: (c.alpha**2 + c.sigma**2) / c.sigma**2),
    "flow": PredictionRule(_flow_x0, _flow_target, _flow_factor),
    "score": PredictionRule(
        x0=lambda out, x, c: (x + _b(c.sigma, x) ** 2 * out) / _b(c.alpha, x),
        target=lambda x0, eps, c: -eps / _b(c.sigma, x0),
        x0_mse_factor=lambda c: c.alpha**2 / c.sigma**4),
    "edm": PredictionRule(
        _edm_x0, _edm_target, lambda c: 1 / c.edm()[1] ** 2,
        net_input=lambda x, c: x / _b(c.alpha, x) * _b(c.edm()[2], x),  # c_in * y
        time_input="log_sigma"),  # c_noise = log(sigma) / 4
    "consistency": PredictionRule(  # EDM's c_in and c_noise, the consistency model's c_skip / c_out
        _cm_x0, _cm_target, lambda c: 1 / _cm_coefficients(c)[1] ** 2,
        net_input=lambda x, c: x / _b(c.alpha, x) * _b(c.edm()[2], x),
        time_input="log_sigma"),
}


def prediction_rule(kind: str) -> PredictionRule:
    """The :class:`PredictionRule` of ``kind``; an unknown name is a ``ValueError`` listing the table."""
    return lookup("prediction", PREDICTIONS, kind)


def x0_from_prediction(kind: str, out: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """Convert a network output ``out`` at native ``x`` into the clean-data estimate x0."""
    return prediction_rule(kind).x0(out, x, c)


def prediction_target(kind: str, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    """What a network of type ``kind`` should output for ``x_t = alpha x0 + sigma eps``."""
    return prediction_rule(kind).target(x0, eps, c)


def prediction_from_x0(kind: str, x0: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """Inverse of :func:`x0_from_prediction`: the output that would give ``x0`` at ``x``."""
    eps = (x - _b(c.alpha, x) * x0) / _b(c.sigma, x)
    return prediction_target(kind, x0, eps, c)


def x0_mse_factor(kind: str, c: Coefficients) -> Tensor:
    """``k`` with ``||out - target||^2 = k ||x0_hat - x0||^2`` for prediction ``kind``: ``(B,)`` float64.

    It converts a weighting defined on the x0 error (min-SNR, EDM) into one on any network's error.
    """
    return prediction_rule(kind).x0_mse_factor(c)


class Denoiser(nn.Module):
    """Adapter: any network, any process, any prediction -> ``denoiser(y, sigma, cond) -> x0_hat``.

    ``net(x, time)`` (or ``net(x, time, cond)`` when ``cond`` is given) receives the native-frame
    ``x = alpha * y`` and ``time`` per ``time_input`` (see :class:`Clock`: ``"model"``, the default, is
    the process's own clock). A prediction with preconditioning replaces both: with ``prediction="edm"``
    the network gets EDM's ``c_in * y`` and ``c_noise``, as in Karras et al. 2022, Table 1.
    """

    def __init__(self, net: Callable[..., Tensor], process: Process, prediction: Prediction = "eps", *,
                 time_input: TimeInput = "model", sigma_data: float = 0.5):
        super().__init__()
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("time_input", time_input, TIME_INPUTS)
        self.net = net  # an nn.Module is registered as a submodule; a plain callable is kept as is
        self.process, self.prediction = process, prediction
        self.time_input, self.sigma_data = time_input, sigma_data

    @property
    def rule(self) -> PredictionRule:
        """The :class:`PredictionRule` of :attr:`prediction`."""
        return prediction_rule(self.prediction)

    @property
    def clock(self) -> Clock:
        """The network's clock: :attr:`time_input`, unless the prediction requires its own."""
        return Clock(self.process, self.rule.time_input or self.time_input)

    def coefficients(self, t: Tensor) -> Coefficients:
        return Coefficients(self.process, t, self.sigma_data)

    def network_time(self, c: Coefficients) -> Tensor:
        """The time ``(B,)`` (float64) the network is given at ``c``: ``self.clock.network_time(c)``."""
        return self.clock.network_time(c)

    def predict(self, x: Tensor, c: Coefficients, cond: Any = None, *, to: Coefficients | None = None) -> Tensor:
        """The raw network output at native-frame ``x`` (what training losses compare). ``to``, the coefficients
        of a target level, is for a network with a second time input (a MeanFlow run): it is given the interval
        ``time(c) - time(to)`` as ``second_time``."""
        rule = self.rule
        inp = x if rule.net_input is None else rule.net_input(x, c)
        t64 = self.network_time(c)
        time = t64.to(device=x.device, dtype=x.dtype)
        extra = {} if to is None else {"second_time": (t64 - self.network_time(to)).to(device=x.device, dtype=x.dtype)}
        out = self.net(inp, time, **extra) if cond is None else self.net(inp, time, cond, **extra)
        if out.shape != x.shape:
            raise ValueError(f"network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        return out

    def forward(self, y: Tensor, sigma: Tensor | float, cond: Any = None, *,
                sigma_to: Tensor | float | None = None) -> Tensor:
        """``x0_hat`` for VE-frame ``y`` ``(B, ...)`` at VE noise ``sigma`` (scalar or ``(B,)``).

        ``sigma_to`` (``<= sigma``; a network with a second time input only) aims the estimate at that level: the
        ``x0_hat`` whose DDIM step from ``sigma`` lands on the network's jump to ``sigma_to`` (MeanFlow's
        ``z_r = z_t - (t - r) u(z_t, r, t)``: :mod:`denoisekit.samplers.meanflow`); ``sigma_to = sigma`` is the
        plain denoiser, ``sigma_to = 0`` the trajectory's origin."""
        sigma64 = as_batch(sigma, y)
        c = self.coefficients(self.process.t_from_sigma(sigma64))
        to = None if sigma_to is None else self.coefficients(self.process.t_from_sigma(as_batch(sigma_to, y)))
        x = y * _b(c.alpha, y)
        return self.rule.x0(self.predict(x, c, cond, to=to), x, c)
