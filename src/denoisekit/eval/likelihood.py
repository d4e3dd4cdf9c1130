"""Exact log-likelihood through the probability-flow ODE, and its conversion to bits per dimension.

Song et al. 2021b ("Score-based generative modeling through SDEs"), Sec. 4.3 and App. D.2: the
probability-flow ODE is a continuous normalising flow (Chen et al. 2018), so the instantaneous
change of variables gives the density of any point exactly. In the VE frame the ODE is

    dy/dsigma = f(y, sigma) = (y - D(y, sigma)) / sigma,    div f = (d - tr(dD/dy)) / sigma,

and integrating the state together with the log-density change from ``sigma_min`` (the data side)
up to ``sigma_max`` gives

    log p_{sigma_min}(x) = log p_prior(y(sigma_max)) + int_{sigma_min}^{sigma_max} div f dsigma.

We integrate in ``u = log sigma`` (``dy/du = y - D``, divergence ``d - tr(dD/dy)``), smooth down to
small sigma. The trace is exact (one backward pass per dimension) for small ``d`` and otherwise the
Hutchinson estimate ``E[v^T (dD/dy) v]`` with probes ``v`` fixed for the whole integration
(Grathwohl et al. 2019, FFJORD), which keeps the ODE deterministic for the adaptive solver.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from .._utils import GeneratorLike, check_choice, randn
from ..process import Process, start_std

Divergence = Literal["auto", "exact", "hutchinson"]
Probe = Literal["rademacher", "gaussian"]

#: ``divergence="auto"`` uses the exact trace up to this many dimensions per sample.
EXACT_MAX_DIM = 16


def _probes(x: Tensor, n: int, kind: str, generator: GeneratorLike) -> list[Tensor]:
    out = []
    for _ in range(n):
        v = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        out.append(torch.where(v >= 0, 1.0, -1.0).to(x.dtype) if kind == "rademacher" else v)
    return out


def _vjp(out: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """``v^T (dout/dy)`` per sample, ``(B, ...)``; zero when ``out`` does not depend on ``y``."""
    (g,) = torch.autograd.grad(out, y, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(y) if g is None else g


def trace_exact(out: Tensor, y: Tensor) -> Tensor:
    """``tr(d out / d y)`` per sample ``(B,)``, one backward pass per dimension.

    A backward pass of ``out[:, i].sum()`` gives row ``i`` of every sample's Jacobian at once, which
    assumes the denoiser treats samples independently (no batch statistics), as any eval model does.
    """
    flat = out.reshape(out.shape[0], -1)
    trace = torch.zeros(out.shape[0], dtype=out.dtype, device=out.device)
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = 1
        trace = trace + _vjp(out, y, e.reshape(out.shape)).reshape(flat.shape)[:, i]
    return trace


def trace_hutchinson(out: Tensor, y: Tensor, probes: list[Tensor]) -> Tensor:
    """Hutchinson's estimate ``mean_v v^T (d out / d y) v`` per sample ``(B,)`` (unbiased when
    ``E[v v^T] = I``: Rademacher or Gaussian probes)."""
    total = torch.zeros(out.shape[0], dtype=out.dtype, device=out.device)
    for v in probes:
        total = total + (_vjp(out, y, v) * v).reshape(out.shape[0], -1).sum(1)
    return total / len(probes)


def nll(denoiser: Any, x0: Tensor, *, sigma_min: float, sigma_max: float, process: Process | None = None,
        prior_std: float | None = None, cond: Any = None, divergence: Divergence = "auto",
        probe: Probe = "rademacher", n_probes: int = 1, generator: GeneratorLike = None,
        rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5") -> Tensor:
    """Negative log-likelihood in nats ``(B,)`` of ``x0`` ``(B, ...)`` under the probability-flow ODE
    of ``denoiser`` (Song et al. 2021b, App. D.2).

    ``x0`` is taken as the state at ``sigma_min``, so this is ``-log p_{sigma_min}(x0)``: the NLL of
    the data *smoothed* by ``N(0, sigma_min^2 I)`` (a continuous density even for quantised data;
    choose ``sigma_min`` well below the quantisation step). The prior at ``sigma_max`` is
    ``N(0, s^2 I)`` with ``s`` from :func:`start_std` (``process`` or ``prior_std``; default the VE
    prior ``s = sigma_max``). Its mismatch with the true marginal costs ``O(|E x0| / sigma_max)`` nats
    per sample (``O(E|x0|^2 / sigma_max^2)`` on average): a large ``sigma_max`` (1e3-1e4) is cheap in
    ``log sigma`` and makes it negligible.

    ``divergence``: ``"exact"`` trace, ``"hutchinson"`` estimate with ``n_probes`` ``probe`` vectors
    per sample drawn from ``generator`` (unbiased; fixed per integration), or ``"auto"`` (exact when a
    sample has at most :data:`EXACT_MAX_DIM` values). The ODE is integrated by torchdiffeq's
    ``method`` (adaptive Dormand-Prince 5(4) by default) at tolerances ``rtol``/``atol``.
    Results are detached; gradients are taken only inside the divergence computation.
    """
    from torchdiffeq import odeint

    check_choice("divergence", divergence, ("auto", "exact", "hutchinson"))
    check_choice("probe", probe, ("rademacher", "gaussian"))
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got {rtol}, {atol}")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch (B, ...), got shape {tuple(x0.shape)}")
    std = start_std(sigma_max, process, prior_std)
    x0 = x0.detach()
    dim = x0[0].numel()
    exact = divergence == "exact" or (divergence == "auto" and dim <= EXACT_MAX_DIM)
    probes = None if exact else _probes(x0, n_probes, probe, generator)

    u_lo, u_hi = math.log(sigma_min), math.log(sigma_max)

    def rhs(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        y = state[0]
        # the solver's trial stages may overshoot the interval: evaluate at its nearest end instead
        sig_u = math.exp(min(max(float(u), u_lo), u_hi))
        sig = torch.full((y.shape[0],), sig_u, dtype=torch.float64, device=y.device)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            den = denoiser(y, sig, cond)
            if not torch.isfinite(den).all():
                raise FloatingPointError(f"denoiser returned NaN/inf at sigma={float(sig[0]):.6g}")
            tr = trace_exact(den, y) if exact else trace_hutchinson(den, y, probes)
        return (y - den).detach(), (dim - tr).detach()

    u = torch.tensor([math.log(sigma_min), math.log(sigma_max)], dtype=torch.float64, device=x0.device)
    delta0 = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    with torch.no_grad():
        ys, deltas = odeint(rhs, (x0, delta0), u, rtol=rtol, atol=atol, method=method)
    y_T = ys[-1].reshape(x0.shape[0], -1).to(torch.float64)
    log_prior = -0.5 * (y_T**2).sum(1) / std**2 - dim * math.log(std) - 0.5 * dim * math.log(2 * math.pi)
    return -(log_prior + deltas[-1].to(torch.float64))


def bits_per_dim(nll_nats: Tensor | float, dims: int, data_range: tuple[float, float] = (-1.0, 1.0),
                 levels: int = 256) -> Tensor:
    """Bits per dimension of ``levels``-level discrete data from a continuous NLL (nats per sample)
    of its uniformly dequantised version in ``data_range`` (Theis et al. 2016, Sec. 3.1).

    Level ``k`` covers the bin ``[lo + k * delta, lo + (k + 1) * delta)``, ``delta = (hi - lo) / levels``
    (``2/256`` for 8-bit images in ``[-1, 1]``). Rescaling bins to unit width multiplies the density by
    ``delta^d``, and with unit bins ``-log2 P(k) <= E_u[-log2 p(k + u)]``, so

        bpd = nll / (d ln 2) - log2(delta)     (= nll / (d ln 2) + 7 for 8-bit data in [-1, 1]).
    """
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    if not isinstance(dims, int) or dims < 1:
        raise ValueError(f"dims must be an integer >= 1, got {dims!r}")
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    delta = (hi - lo) / levels
    return torch.as_tensor(nll_nats, dtype=torch.float64) / (dims * math.log(2)) - math.log2(delta)


def dequantize(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0), levels: int = 256,
               generator: GeneratorLike = None) -> Tensor:
    """Uniform dequantisation of images stored as ``lo + k (hi - lo) / (levels - 1)`` (the usual
    ``k / 127.5 - 1``): returns ``lo + (k + u) delta``, ``u ~ U[0, 1)``, the density :func:`bits_per_dim`
    expects (Uria et al. 2013; Theis et al. 2016)."""
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    k = torch.round((x.to(torch.float64) - lo) / (hi - lo) * (levels - 1)).clamp(0, levels - 1)
    if generator is None or isinstance(generator, torch.Generator):
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    else:  # per-sample generators, as :func:`denoisekit._utils.randn`
        u = torch.stack([torch.rand(x.shape[1:], generator=g, dtype=torch.float64) for g in generator])
    return (lo + (k + u.to(x.device)) * (hi - lo) / levels).to(x.dtype)
