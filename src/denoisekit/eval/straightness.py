"""Straightness of a flow: how far its ODE trajectories are from straight lines (Liu et al. 2023, Def. 2.2).

For the probability-flow ODE ``dx_t/dt = v(x_t, t)`` of a model (native frame, ``t = 1`` noise, ``t = 0`` data)
and its trajectories ``Z_t`` from prior noise,

    S(v) = int_0^1 E || (Z_1 - Z_0) - v(Z_t, t) ||^2 dt,

zero exactly when every trajectory is a straight line travelled at constant speed, so that one Euler step
is exact; the k-rectified flows of Liu et al. (reflow) drive it down. ``||.||^2`` is the squared norm
summed over the dimensions (the paper's), averaged over the samples. :func:`straightness` integrates the
ODE on a uniform grid in ``t`` and sums the integrand at the left end of each step.

:func:`velocity` turns any denoiser (the VE-frame contract) into the native velocity
``v = alpha' x0_hat + sigma' eps_hat``: for rectified flow (``alpha = 1 - t, sigma = t``) ``v = eps_hat - x0_hat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .._utils import check_choice
from ..process import Process, start_std

METHODS = ("euler", "heun")


def _process_of(denoiser: Any, process: Process | None) -> tuple[Any, Process]:
    """The denoiser (a loaded model's, for a :class:`~denoisekit.generation.LoadedModel`) and its process."""
    if hasattr(denoiser, "denoiser") and hasattr(denoiser, "image_shape"):  # a LoadedModel
        denoiser = denoiser.denoiser
    if process is not None:
        return denoiser, process
    try:  # the Denoiser contract carries its process; a bare callable must be told it
        process = denoiser.process
    except AttributeError:
        process = None
    if process is None:
        raise ValueError("straightness needs the denoiser's process: give process= for a bare denoiser")
    return denoiser, process


def velocity(denoiser: Any, x: Tensor, t: float, cond: Any = None, *, process: Process | None = None) -> Tensor:
    """The ODE velocity ``dx_t/dt = alpha'(t) x0_hat + sigma'(t) eps_hat`` at native ``x`` ``(B, ...)`` and time
    ``t`` (``alpha(t), sigma(t) > 0``), from the VE-frame denoiser ``x0_hat = D(x / alpha, sigma / alpha)``."""
    denoiser, process = _process_of(denoiser, process)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    if not (a > 0 and s > 0):
        raise ValueError(f"velocity needs alpha(t) > 0 and sigma(t) > 0, got {a:.3g}, {s:.3g} at t={t}")
    da, ds = (float(v) for v in process.derivatives(t))
    sigma = torch.full((x.shape[0],), s / a, dtype=x.dtype, device=x.device)
    x0 = denoiser(x / a, sigma, cond).to(x)
    return da * x0 + ds * (x - a * x0) / s


@dataclass(frozen=True)
class Straightness:
    """``value``: S(v); ``per_sample`` ``(B,)``: each trajectory's integral; ``start``, ``end``: the native
    ``Z_1`` (noise) and ``Z_0`` (the sample) of every trajectory -- the ODE's coupling."""

    value: float
    per_sample: Tensor
    start: Tensor
    end: Tensor


@torch.no_grad()
def straightness(denoiser: Any, noise: Tensor, *, steps: int = 100, method: Literal["euler", "heun"] = "heun",
                 cond: Any = None, process: Process | None = None) -> Straightness:
    """S(v) (module docstring) of ``denoiser`` (or a loaded model) over trajectories from standard normal
    ``noise`` ``(B, ...)``: the ODE from the process's ``t_max`` (the native prior ``alpha sigma_ve noise``) to
    ``t = 0`` in ``steps`` uniform steps of ``method``; a step that ends where ``sigma = 0`` is an Euler step
    (exact there: it lands on ``x0_hat``). The chord is ``(Z_1 - Z_0) / (t_max - 0)``."""
    check_choice("straightness method", method, METHODS)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    denoiser, process = _process_of(denoiser, process)
    t_max = float(process.t_max)
    ts = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = (noise.double() * float(start_std(float(process.sigma_max), process)) * float(process.alpha(t_max))).to(noise)
    start, vs, hs = x, [], []
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        v = velocity(denoiser, x, t, cond, process=process)
        vs.append(v)
        hs.append(-h)
        if method == "euler" or float(process.sigma(t_next)) == 0.0:
            x = x + h * v
        else:
            x = x + 0.5 * h * (v + velocity(denoiser, x + h * v, t_next, cond, process=process))
    chord = (start - x) / t_max
    per = sum(w * ((chord - v) ** 2).flatten(1).sum(1) for w, v in zip(hs, vs)) / t_max
    return Straightness(float(per.mean()), per, start, x)
