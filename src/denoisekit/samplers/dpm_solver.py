"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b): exponential integrators in log-SNR time.

In the VE frame (alpha = 1) put ``lambda = -log(sigma)`` (DPM-Solver's ``log(alpha / sigma)``, half the
log-SNR) and ``h = lambda_next - lambda``. The probability-flow ODE ``dy/dsigma = (y - D) / sigma`` is

    dy/dlambda = D(y, lambda) - y        so   y_t = e^-h y_s + int e^-(lambda_t - l) D(l) dl      (data, "++")
    dy/dlambda = -sigma eps(y, lambda)   so   y_t = y_s - int e^-l eps(l) dl                        (noise)

and a Taylor expansion of ``D`` (or ``eps``) in lambda turns the integrals into the phi-function
weights below (Lu et al. 2022a, Sec. 3; 2022b, Sec. 4). The stochastic variants integrate the family
``dy = (1 + eta) (D - y) dlambda + sigma sqrt(2 eta) dW`` (Karras et al. 2022, eq. 6 with
``beta = eta sigma'/sigma``): ``eta = 1`` is the reverse diffusion SDE of DPM-Solver++'s SDE solvers,
``eta = 0`` the ODE. Its linear part is solved exactly: with ``c = 1 + eta``, ``H = c h``,

    y_t = e^-H y_s + sum_k g_k(H) h^k D^(k)(lambda_s) + sigma_t sqrt(1 - e^(-2 eta h)) z,
    g_k(H) = H phi_{k+1}(-H)   (g_0 = 1 - e^-H, g_1 ~ H/2, g_2 ~ H/6).

A step that ends at ``sigma = 0`` has ``h = inf``: every higher-order term there would be evaluated at
or extrapolated to ``sigma = 0``, so every method takes its first-order step, whose limit is exactly
``y = D(y, sigma)`` (the same ``x0_hat`` DDIM returns). Step coefficients are Python floats (float64).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from torch import Tensor

from .._utils import GeneratorLike, check_choice, randn_like
from ._common import Callback, DenoiserFn, ancestral_split, denoise, notify, sigma_list

SolverType = Literal["midpoint", "heun"]


def phi(k: int, z: float) -> float:
    """``phi_k(z) = sum_j z^j / (j + k)!``: ``phi_0 = e^z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``.

    The series is used for ``|z| < 1``, where the recurrence would cancel catastrophically.
    """
    if abs(z) < 1.0:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(30):
            total += term
            term *= z / (j + k + 1)
        return total
    val = math.exp(z)
    for i in range(k):
        val = (val - 1.0 / math.factorial(i)) / z
    return val


def _g(k: int, big_h: float) -> float:
    """Weight of ``h^k D^(k)`` in a data-prediction step: ``H phi_{k+1}(-H)`` (see module docstring)."""
    return -math.expm1(-big_h) if k == 0 else big_h * phi(k + 1, -big_h)


def _eps(x: Tensor, d: Tensor, sigma: float) -> Tensor:
    return (x - d) / sigma


def _check_r(r1: float, r2: float | None = None) -> None:
    if not 0 < r1 < 1 or (r2 is not None and not r1 < r2 < 1):
        raise ValueError(f"intermediate points need 0 < r1 < r2 < 1 (fractions of a step in lambda), got "
                         f"r1={r1}, r2={r2}")


def _dpm_solver(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, order: int, r1: float, r2: float,
                cond: Any, callback: Callback | None) -> Tensor:
    """Singlestep DPM-Solver-1/2/3 in noise prediction (Lu et al. 2022a, Sec. 3.3, Algorithms 1-2)."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sig, nxt = s[i], s[i + 1]
        d = denoise(denoiser, x, sig, cond, i)
        if nxt == 0:
            x_next = d  # the first-order step's limit: y - sigma eps = D
        else:
            h = math.log(sig / nxt)
            eps = _eps(x, d, sig)
            # sigma_t (e^h - 1) = sigma_s - sigma_t exactly in the VE frame
            x_next = x - (sig - nxt) * eps
            if order == 2:
                s1 = sig * math.exp(-r1 * h)
                u1 = x - (sig - s1) * eps
                e1 = _eps(u1, denoise(denoiser, u1, s1, cond, i), s1)
                x_next = x_next - (sig - nxt) / (2 * r1) * (e1 - eps)
            elif order == 3:
                s1, s2 = sig * math.exp(-r1 * h), sig * math.exp(-r2 * h)
                u1 = x - (sig - s1) * eps
                d1 = _eps(u1, denoise(denoiser, u1, s1, cond, i), s1) - eps
                # sigma_s2 (r2/r1) ((e^{r2 h} - 1)/(r2 h) - 1) = sigma_s2 (r2/r1) z phi_2(z), z = r2 h
                u2 = x - (sig - s2) * eps - (s2 * r2 / r1 * r2 * h * phi(2, r2 * h)) * d1
                d2 = _eps(u2, denoise(denoiser, u2, s2, cond, i), s2) - eps
                x_next = x_next - (nxt / r2 * h * phi(2, h)) * d2
        x = x_next
        notify(callback, i, x, sig, nxt, d)
    return x


def sample_dpm_solver_1(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                        generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver-1 (Lu et al. 2022a, Sec. 3.3): ``y_t = y_s - sigma_t (e^h - 1) eps``; in the VE frame
    this is exactly DDIM / Euler. 1 NFE per step."""
    return _dpm_solver(denoiser, x, sigmas, 1, 0.5, 1.0, cond, callback)


def sample_dpm_solver_2(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, r1: float = 0.5, cond: Any = None,
                        generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022a, Algorithm 1), noise prediction, intermediate point at the
    fraction ``r1`` of each step in lambda (0.5: the log-SNR midpoint). ``sigmas`` are step boundaries:
    2 NFE per step, 1 on a final step to 0."""
    _check_r(r1)
    return _dpm_solver(denoiser, x, sigmas, 2, r1, 1.0, cond, callback)


def sample_dpm_solver_3(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, r1: float = 1 / 3,
                        r2: float = 2 / 3, cond: Any = None, generator: GeneratorLike = None,
                        callback: Callback | None = None) -> Tensor:
    """DPM-Solver-3 (Lu et al. 2022a, Algorithm 2), noise prediction, intermediate points at fractions
    ``r1 < r2`` of each step in lambda (third order needs ``r2 = 2/3``). 3 NFE per step, 1 on a final
    step to 0."""
    _check_r(r1, r2)
    return _dpm_solver(denoiser, x, sigmas, 3, r1, r2, cond, callback)


def sample_dpmpp_2s(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, r1: float = 0.5, eta: float = 0.0,
                    s_noise: float = 1.0, cond: Any = None, generator: GeneratorLike = None,
                    callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1): singlestep, data prediction, intermediate point
    at the fraction ``r1`` of the step in lambda. ``eta > 0`` makes it ancestral: the 2S step goes to
    ``sigma_down`` and fresh noise ``s_noise * sigma_up`` follows (as DDIM's eta; 0 is the ODE).
    2 NFE per step, 1 on a final step to 0."""
    _check_r(r1)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sig, nxt = s[i], s[i + 1]
        d = denoise(denoiser, x, sig, cond, i)
        down, up = ancestral_split(sig, nxt, eta)
        if down == 0:
            x_next = d
        else:
            h = math.log(sig / down)
            s1 = sig * math.exp(-r1 * h)
            u1 = (s1 / sig) * x - math.expm1(-r1 * h) * d
            d1 = denoise(denoiser, u1, s1, cond, i)
            x_next = (down / sig) * x - math.expm1(-h) * ((1 - 0.5 / r1) * d + (0.5 / r1) * d1)
        if up > 0:
            x_next = x_next + randn_like(x_next, generator) * (s_noise * up)
        x = x_next
        notify(callback, i, x, sig, nxt, d)
    return x


def _dpmpp_multistep(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, order: int, eta: float, s_noise: float,
                     solver_type: str, lower_order_final: bool, cond: Any, generator: GeneratorLike,
                     callback: Callback | None) -> Tensor:
    """Multistep DPM-Solver++ for the ODE (``eta = 0``) or the SDE family (module docstring).

    Derivatives come from backward divided differences of past ``D`` in lambda (Adams-Bashforth style):
    ``d1 ~ h D'`` and ``d2 ~ h^2 D''/2``; the first steps use lower order while history builds up.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    check_choice("solver_type", solver_type, ("midpoint", "heun"))
    s = sigma_list(sigmas)
    n = len(s) - 1
    lams: list[float] = []
    ds: list[Tensor] = []
    for i in range(n):
        sig, nxt = s[i], s[i + 1]
        d = denoise(denoiser, x, sig, cond, i)
        lams, ds = (lams + [-math.log(sig)])[-order:], (ds + [d])[-order:]
        if nxt == 0:
            x = d  # first-order limit (module docstring); no noise is added on the step to 0
            notify(callback, i, x, sig, nxt, d)
            continue
        h = math.log(sig / nxt)
        big_h = (1 + eta) * h
        q = min(order, len(ds), n - i if lower_order_final else order)
        x_next = math.exp(-big_h) * x + _g(0, big_h) * d
        if q == 2:
            d1 = (d - ds[-2]) * (h / (lams[-1] - lams[-2]))
            w = 0.5 * _g(0, big_h) if solver_type == "midpoint" else _g(1, big_h)
            x_next = x_next + w * d1
        elif q == 3:
            r0, r1 = (lams[-1] - lams[-2]) / h, (lams[-2] - lams[-3]) / h
            d1_0, d1_1 = (d - ds[-2]) / r0, (ds[-2] - ds[-3]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            # d2 ~ h^2 D''/2 while g_2 weighs h^2 D'': hence the factor 2 (exact for quadratic D)
            x_next = x_next + _g(1, big_h) * d1 + (2 * _g(2, big_h)) * d2
        if eta > 0:
            x_next = x_next + randn_like(x_next, generator) * (s_noise * nxt * math.sqrt(-math.expm1(-2 * eta * h)))
        x = x_next
        notify(callback, i, x, sig, nxt, d)
    return x


def sample_dpmpp_2m(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, lower_order_final: bool = True,
                    cond: Any = None, generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, data prediction, 1 NFE per step.
    The first step is first order; with ``lower_order_final`` so is the last (always when it ends at 0)."""
    return _dpmpp_multistep(denoiser, x, sigmas, order=2, eta=0.0, s_noise=1.0, solver_type="midpoint",
                            lower_order_final=lower_order_final, cond=cond, generator=generator, callback=callback)


def sample_dpmpp_3m(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, lower_order_final: bool = True,
                    cond: Any = None, generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(3M): third-order multistep, data prediction, 1 NFE per step (Lu et al. 2022b; the
    third-order multistep update of their code, derived here from the Taylor expansion).

    Warm-up uses orders 1, 2 (the second-order steps are (2M)); with ``lower_order_final`` the k-th
    step from the end uses order <= k. The ``D''`` term carries the full Taylor weight
    ``2 g_2 d2``: the official code and diffusers weigh ``d2`` by ``g_2`` alone, which makes their
    third-order update exact only to first order in ``D''`` (second order globally).
    """
    return _dpmpp_multistep(denoiser, x, sigmas, order=3, eta=0.0, s_noise=1.0, solver_type="midpoint",
                            lower_order_final=lower_order_final, cond=cond, generator=generator, callback=callback)


def sample_dpmpp_2m_sde(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: SolverType = "midpoint", lower_order_final: bool = True, cond: Any = None,
                        generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b): the (2M) multistep update for the SDE family
    with strength ``eta`` (1: the reverse SDE; 0: the ODE, where ``"midpoint"`` is exactly (2M)).

    ``solver_type`` is the weight of the first-derivative term: ``"midpoint"`` uses ``g_0 / 2``,
    ``"heun"`` the exact ``g_1`` (diffusers' names). Noise ``s_noise sigma_t sqrt(1 - e^(-2 eta h))``.
    """
    return _dpmpp_multistep(denoiser, x, sigmas, order=2, eta=eta, s_noise=s_noise, solver_type=solver_type,
                            lower_order_final=lower_order_final, cond=cond, generator=generator, callback=callback)


def sample_dpmpp_3m_sde(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                        lower_order_final: bool = True, cond: Any = None, generator: GeneratorLike = None,
                        callback: Callback | None = None) -> Tensor:
    """SDE-DPM-Solver++(3M): the third-order multistep update of :func:`sample_dpmpp_3m` for the SDE
    family with strength ``eta`` (``eta = 0`` is exactly :func:`sample_dpmpp_3m`)."""
    return _dpmpp_multistep(denoiser, x, sigmas, order=3, eta=eta, s_noise=s_noise, solver_type="midpoint",
                            lower_order_final=lower_order_final, cond=cond, generator=generator, callback=callback)
