"""Parameterisations and the denoiser contract.

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

:class:`Denoiser` turns any such network, ours or external, into the one contract every sampler,
guidance and loss uses: ``denoiser(y, sigma, cond) -> x0_hat`` in the VE frame ``y = x / alpha``,
``sigma = sigma_native / alpha``. Example with a diffusers U-Net (it takes ``(x_t, timestep)``)::

    from denoisekit import Denoiser, get_process
    process = get_process("ddpm")                       # timesteps 0..999 as diffusers'
    denoiser = Denoiser(lambda x, t: unet(x, t).sample, process, "eps")
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from ._utils import append_dims, as_batch, check_choice
from .process import Process

Prediction = Literal["eps", "x0", "v", "flow", "score", "edm"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "flow", "score", "edm")
TimeInput = Literal["model", "t", "log_sigma"]


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


def x0_from_prediction(kind: str, out: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """Convert a network output ``out`` at native ``x`` into the clean-data estimate x0."""
    a, s = _b(c.alpha, x), _b(c.sigma, x)
    if kind == "eps":
        return (x - s * out) / a
    if kind == "x0":
        return out
    if kind == "v":
        r = torch.sqrt(a**2 + s**2)
        return (a * x / r - s * out) / r
    if kind == "flow":
        da, ds = (_b(d, x) for d in c.derivatives)
        return (ds * x - s * out) / (ds * a - s * da)
    if kind == "score":
        return (x + s**2 * out) / a
    if kind == "edm":
        c_skip, c_out, _, _ = (_b(v, x) for v in c.edm())
        return c_skip * (x / a) + c_out * out
    check_choice("prediction", kind, PREDICTIONS)
    raise AssertionError


def prediction_target(kind: str, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    """What a network of type ``kind`` should output for ``x_t = alpha x0 + sigma eps``."""
    a, s = _b(c.alpha, x0), _b(c.sigma, x0)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        r = torch.sqrt(a**2 + s**2)
        return (a * eps - s * x0) / r
    if kind == "flow":
        da, ds = (_b(d, x0) for d in c.derivatives)
        return da * x0 + ds * eps
    if kind == "score":
        return -eps / s
    if kind == "edm":
        c_skip, c_out, _, _ = (_b(v, x0) for v in c.edm())
        return (x0 - c_skip * (x0 + _b(c.sigma_ve, x0) * eps)) / c_out
    check_choice("prediction", kind, PREDICTIONS)
    raise AssertionError


def prediction_from_x0(kind: str, x0: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """Inverse of :func:`x0_from_prediction`: the output that would give ``x0`` at ``x``."""
    eps = (x - _b(c.alpha, x) * x0) / _b(c.sigma, x)
    return prediction_target(kind, x0, eps, c)


def x0_mse_factor(kind: str, c: Coefficients) -> Tensor:
    """``k`` with ``||out - target||^2 = k ||x0_hat - x0||^2`` for prediction ``kind``: ``(B,)`` float64.

    It converts a weighting defined on the x0 error (min-SNR, EDM) into one on any network's error.
    """
    a, s = c.alpha, c.sigma
    if kind == "eps":
        return (a / s) ** 2
    if kind == "x0":
        return torch.ones_like(a)
    if kind == "v":
        return (a**2 + s**2) / s**2
    if kind == "flow":
        da, ds = c.derivatives
        return ((ds * a - s * da) / s) ** 2
    if kind == "score":
        return a**2 / s**4
    if kind == "edm":
        return 1 / c.edm()[1] ** 2
    check_choice("prediction", kind, PREDICTIONS)
    raise AssertionError


class Denoiser(nn.Module):
    """Adapter: any network, any process, any prediction -> ``denoiser(y, sigma, cond) -> x0_hat``.

    ``net(x, time)`` (or ``net(x, time, cond)`` when ``cond`` is given) receives the native-frame
    ``x = alpha * y`` and ``time`` per ``time_input``: ``"model"`` (default) is the process's own
    clock (``t``, or the step index 0..N-1 for a discrete process, as diffusers' U-Nets expect),
    ``"t"`` is t in [0, 1], ``"log_sigma"`` is ``log(sigma_ve) / 4``. With ``prediction="edm"`` the
    network gets EDM's ``c_in * y`` and ``c_noise`` instead, as in Karras et al. 2022, Table 1.
    """

    def __init__(self, net: Callable[..., Tensor], process: Process, prediction: Prediction = "eps", *,
                 time_input: TimeInput = "model", sigma_data: float = 0.5):
        super().__init__()
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("time_input", time_input, ("model", "t", "log_sigma"))
        self.net = net  # an nn.Module is registered as a submodule; a plain callable is kept as is
        self.process, self.prediction = process, prediction
        self.time_input, self.sigma_data = time_input, sigma_data

    def coefficients(self, t: Tensor) -> Coefficients:
        return Coefficients(self.process, t, self.sigma_data)

    def _time(self, c: Coefficients) -> Tensor:
        if self.prediction == "edm" or self.time_input == "log_sigma":
            return torch.log(c.sigma_ve) / 4
        return self.process.model_time(c.t) if self.time_input == "model" else c.t

    def predict(self, x: Tensor, c: Coefficients, cond: Any = None) -> Tensor:
        """The raw network output at native-frame ``x`` (what training losses compare)."""
        inp = x
        if self.prediction == "edm":
            inp = x / _b(c.alpha, x) * _b(c.edm()[2], x)
        time = self._time(c).to(device=x.device, dtype=x.dtype)
        out = self.net(inp, time) if cond is None else self.net(inp, time, cond)
        if out.shape != x.shape:
            raise ValueError(f"network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        return out

    def forward(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        """``x0_hat`` for VE-frame ``y`` ``(B, ...)`` at VE noise ``sigma`` (scalar or ``(B,)``)."""
        sigma64 = as_batch(sigma, y)
        c = self.coefficients(self.process.t_from_sigma(sigma64))
        x = y * _b(c.alpha, y)
        return x0_from_prediction(self.prediction, self.predict(x, c, cond), x, c)
