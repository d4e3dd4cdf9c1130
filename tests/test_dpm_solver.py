"""DPM-Solver and DPM-Solver++ on the exact Gaussian-mixture oracle: convergence order, exactness of the
Taylor weights, SDE sampling accuracy, grid validation and the step to sigma = 0."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from denoisekit.samplers import (sample_ddim, sample_dpm_solver_1, sample_dpm_solver_2, sample_dpm_solver_3,
                                 sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2s, sample_dpmpp_3m,
                                 sample_dpmpp_3m_sde)
from denoisekit.samplers.dpm_solver import phi
from denoisekit.schedules import get_sigmas_exponential, get_sigmas_karras

SIGMA_MAX, SIGMA_MIN = 20.0, 0.05
NO_LOF = {"lower_order_final": False}  # keep full order on the last steps of a grid ending at sigma_min


@pytest.fixture(scope="module")
def problem(gm2):
    """Start points and the exact ODE solution from SIGMA_MAX to SIGMA_MIN (a grid not ending at 0,
    so the error is pure discretisation error of the method's own order)."""
    y = gm2.prior_noise(64, SIGMA_MAX, torch.Generator().manual_seed(0))
    return y, gm2.ode_solution(y, SIGMA_MAX, SIGMA_MIN)


def fitted_order(gm, problem, sampler, steps=(32, 64, 128), **options) -> float:
    """Least-squares slope of log2(error) against log2(1 / steps) on an exponential grid."""
    y, exact = problem
    errs = []
    for n in steps:
        sigmas = get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX)[:-1]  # drop the final 0
        errs.append((sampler(gm, y, sigmas, **options) - exact).norm(dim=1).mean().item())
    xs = [-math.log2(n) for n in steps]
    ls = [math.log2(e) for e in errs]
    mx, ml = sum(xs) / len(xs), sum(ls) / len(ls)
    return sum((a - mx) * (b - ml) for a, b in zip(xs, ls)) / sum((a - mx) ** 2 for a in xs)


# Measured slopes (32-128 steps): dpm_solver_1 1.03, _2 2.05, _3 3.03, 2s 1.99, 2m 1.97, 3m 3.18, 2m-sde heun 2.03.
@pytest.mark.parametrize("sampler, order, options", [
    (sample_dpm_solver_1, 1, {}),
    (sample_dpm_solver_2, 2, {}),
    (sample_dpm_solver_3, 3, {}),
    (sample_dpmpp_2s, 2, {}),
    (sample_dpmpp_2m, 2, NO_LOF),
    (sample_dpmpp_3m, 3, NO_LOF),
    (sample_dpmpp_2m_sde, 2, {"eta": 0.0, "solver_type": "heun", **NO_LOF}),
])
def test_convergence_order(gm2, problem, sampler, order, options):
    assert fitted_order(gm2, problem, sampler, **options) >= order - 0.3


def _polynomial_denoiser(coefs):
    """A denoiser whose output is ``sum_k coefs[k] lambda^k`` everywhere (independent of y), lambda =
    -log sigma: every step of the ODE/SDE mean is then an exact integral we can compare against."""
    def denoiser(y, sigma, cond=None):
        lam = -torch.log(sigma.to(torch.float64))
        val = sum(c * lam**k for k, c in enumerate(coefs))
        return val.reshape((-1,) + (1,) * (y.ndim - 1)).expand_as(y).to(y.dtype)
    return denoiser


def _exact_step(x, lam_s, lam_t, coefs, c=1.0):
    """Mean of the (1 + eta = c) family over one step: e^-c h x + int c e^-c (lam_t - l) P(l) dl."""
    integral = quad(lambda lam: c * math.exp(-c * (lam_t - lam)) * sum(a * lam**k for k, a in enumerate(coefs)),
                    lam_s, lam_t, epsabs=1e-14, epsrel=1e-14)[0]
    return math.exp(-c * (lam_t - lam_s)) * x + integral


@pytest.mark.parametrize("sampler, options, degree, first, c", [
    # third-order multistep steps (from step 2 on) integrate a quadratic x0(lambda) exactly ...
    (sample_dpmpp_3m, NO_LOF, 2, 2, 1.0),
    (sample_dpmpp_3m_sde, {"eta": 0.5, "s_noise": 0.0, **NO_LOF}, 2, 2, 1.5),
    # ... and the exact-weight ("heun") second-order steps a linear one
    (sample_dpmpp_2m_sde, {"eta": 0.0, "solver_type": "heun", **NO_LOF}, 1, 1, 1.0),
    (sample_dpmpp_2m_sde, {"eta": 1.0, "s_noise": 0.0, "solver_type": "heun", **NO_LOF}, 1, 1, 2.0),
])
def test_multistep_taylor_weights_are_exact(sampler, options, degree, first, c):
    coefs = [0.3, -0.7, 0.45][:degree + 1]
    sigmas = torch.tensor([8.0, 5.0, 2.5, 1.7, 0.9, 0.3], dtype=torch.float64)  # non-uniform in lambda
    states = [torch.tensor([[1.25]], dtype=torch.float64)]
    sampler(_polynomial_denoiser(coefs), states[0], sigmas, callback=lambda info: states.append(info["x"]),
            **options)
    lam = [-math.log(s) for s in sigmas.tolist()]
    for i in range(first, len(lam) - 1):
        want = _exact_step(states[i].item(), lam[i], lam[i + 1], coefs, c)
        assert abs(states[i + 1].item() - want) < 1e-11, f"step {i}"


def test_eta_zero_is_the_ode():
    """The SDE family at eta = 0 is the ODE: 2M-SDE (midpoint) is (2M) and 3M-SDE is (3M), exactly."""
    den = _polynomial_denoiser([0.1, 0.2, -0.3])
    y = torch.linspace(-2, 2, 6, dtype=torch.float64).reshape(3, 2) * 10
    s = get_sigmas_karras(7, 0.02, 10.0)
    assert torch.equal(sample_dpmpp_2m_sde(den, y, s, eta=0.0), sample_dpmpp_2m(den, y, s))
    assert torch.equal(sample_dpmpp_3m_sde(den, y, s, eta=0.0), sample_dpmpp_3m(den, y, s))


def test_first_order_is_ddim(gm2):
    y = gm2.prior_noise(8, 10.0, torch.Generator().manual_seed(1))
    s = get_sigmas_karras(6, 0.01, 10.0)
    torch.testing.assert_close(sample_dpm_solver_1(gm2, y, s), sample_ddim(gm2, y, s), rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # hundreds of stochastic steps (~1 s each)
@pytest.mark.parametrize("sampler, options", [
    (sample_dpmpp_2m_sde, {}),
    (sample_dpmpp_2m_sde, {"solver_type": "heun"}),
    (sample_dpmpp_3m_sde, {}),
    (sample_dpmpp_2s, {"eta": 1.0}),
])
def test_sde_samples_reproduce_the_mixture(gm2, sampler, options):
    """Mean log-density of the samples under the mixture matches that of exact samples. With 4000
    samples its standard error is ~0.02 nats; measured differences are -0.014 to -0.044, while
    s_noise = 1.1, 1.3 or 0 miss by -0.24, -0.69 and +1.96 (checked by hand)."""
    n = 4000
    exact = gm2.log_prob(gm2.sample(n, torch.Generator().manual_seed(1))).mean().item()
    y = gm2.prior_noise(n, 80.0, torch.Generator().manual_seed(2))
    x = sampler(gm2, y, get_sigmas_karras(100, 0.002, 80.0), generator=torch.Generator().manual_seed(3), **options)
    assert abs(gm2.log_prob(x).mean().item() - exact) < 0.08


ALL = [sample_dpm_solver_1, sample_dpm_solver_2, sample_dpm_solver_3, sample_dpmpp_2s, sample_dpmpp_2m,
       sample_dpmpp_3m, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde]


@pytest.mark.parametrize("sampler", ALL)
@pytest.mark.parametrize("grid", [[1.0, 2.0, 0.0], [3.0, float("nan"), 0.0], [2.0, -1.0], [5.0], [1.0, 1.0, 0.0]])
def test_bad_grids_raise(sampler, grid):
    with pytest.raises(ValueError):
        sampler(lambda y, s, c=None: y, torch.zeros(2, 2), torch.tensor(grid, dtype=torch.float64))


@pytest.mark.parametrize("call", [
    lambda d, y, s: sample_dpm_solver_2(d, y, s, r1=0.0),
    lambda d, y, s: sample_dpm_solver_3(d, y, s, r1=0.7, r2=0.5),
    lambda d, y, s: sample_dpmpp_2s(d, y, s, r1=1.0),
    lambda d, y, s: sample_dpmpp_2s(d, y, s, eta=-1.0),
    lambda d, y, s: sample_dpmpp_2m_sde(d, y, s, eta=-0.1),
    lambda d, y, s: sample_dpmpp_2m_sde(d, y, s, solver_type="rk4"),
])
def test_bad_options_raise(call):
    with pytest.raises(ValueError):
        call(lambda y, s, c=None: y, torch.zeros(2, 2), torch.tensor([1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("sampler", ALL)
def test_final_step_to_zero_is_x0_hat_and_finite(gm2, sampler):
    """The step to sigma = 0 (h = inf) returns the denoiser's x0 at the last level, finite, even in
    float32 and from a tiny last level; every step reports to the callback."""
    y = gm2.prior_noise(16, 10.0, torch.Generator().manual_seed(4), dtype=torch.float32)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.2, 1e-4, 0.0], dtype=torch.float64)
    seen: list[dict] = []
    out = sampler(gm2, y, sigmas, generator=torch.Generator().manual_seed(0), callback=seen.append)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert [info["i"] for info in seen] == list(range(5))
    assert torch.equal(out, seen[-1]["denoised"])


def test_nan_from_denoiser_names_the_step():
    def bad(y, s, c=None):
        return y * float("nan") if float(s[0]) < 1 else y * 0.5
    with pytest.raises(FloatingPointError, match="step"):
        sample_dpmpp_2m(bad, torch.ones(2, 2), torch.tensor([4.0, 2.0, 0.5, 0.0], dtype=torch.float64))


def test_phi_series_and_recurrence_agree():
    for k in range(4):
        for z in (-0.999, 0.999, -1.0, 1.0):
            exact = quad(lambda s: math.exp((1 - s) * z) * s ** (k - 1) / math.factorial(k - 1), 0, 1)[0] \
                if k > 0 else math.exp(z)
            assert abs(phi(k, z) - exact) < 1e-13
