"""UniPC on the exact Gaussian-mixture oracle: UniC raises the order by one, the unified update is exact
on polynomials of the right degree, and the identities with DPM-Solver++."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from denoisekit.samplers import sample_dpmpp_2m, sample_dpmpp_3m, sample_unipc
from denoisekit.samplers.unipc import _unified_update
from denoisekit.schedules import get_sigmas_exponential, get_sigmas_karras

SIGMA_MAX, SIGMA_MIN = 20.0, 0.05


@pytest.fixture(scope="module")
def problem(gm2):
    y = gm2.prior_noise(64, SIGMA_MAX, torch.Generator().manual_seed(0))
    return y, gm2.ode_solution(y, SIGMA_MAX, SIGMA_MIN)


def fitted_order(gm, problem, steps=(32, 64, 128), **options) -> float:
    """Least-squares slope of log2(error) against log2(1 / steps), exponential grid ending at SIGMA_MIN."""
    y, exact = problem
    errs = []
    for n in steps:
        sigmas = get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX)[:-1]
        errs.append((sample_unipc(gm, y, sigmas, lower_order_final=False, **options) - exact)
                    .norm(dim=1).mean().item())
    xs, ls = [-math.log2(n) for n in steps], [math.log2(e) for e in errs]
    mx, ml = sum(xs) / len(xs), sum(ls) / len(ls)
    return sum((a - mx) * (b - ml) for a, b in zip(xs, ls)) / sum((a - mx) ** 2 for a in xs)


# Measured slopes: UniPC-1 2.0, UniPC-2 3.0-3.1, UniPC-3 4.0 (both variants); UniP-2 1.97, UniP-3 3.18.
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_corrector_raises_the_order(gm2, problem, variant, order):
    assert fitted_order(gm2, problem, variant=variant, order=order) >= order + 1 - 0.3


@pytest.mark.parametrize("order", [2, 3])
def test_predictor_alone_has_its_order(gm2, problem, order):
    assert fitted_order(gm2, problem, variant="bh1", order=order, corrector=False) >= order - 0.3


def _poly(coefs, lam):
    return sum(c * lam**k for k, c in enumerate(coefs))


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("kind, order, degree", [("predictor", 3, 2), ("corrector", 2, 2), ("corrector", 3, 3)])
def test_unified_update_is_exact_on_polynomials(variant, kind, order, degree):
    """With x0(lambda) a polynomial, UniP-p with solved coefficients is exact up to degree p - 1 and
    UniC-p up to degree p (Zhao et al. 2023, Sec. 3): compare with the exact integral of one step."""
    coefs = [0.4, -0.3, 0.25, -0.1][:degree + 1]
    lams = [-1.3, -0.6, 0.0]  # past grid points, non-uniform, the last at the step start
    lam_t = 0.55
    ds = [torch.full((1, 1), _poly(coefs, lam), dtype=torch.float64) for lam in lams]
    x = torch.full((1, 1), 0.8, dtype=torch.float64)
    d_new = torch.full((1, 1), _poly(coefs, lam_t), dtype=torch.float64) if kind == "corrector" else None
    out = _unified_update(x, math.exp(-lams[-1]), math.exp(-lam_t), lams, ds, order, variant, d_new)
    integral = quad(lambda lam: math.exp(-(lam_t - lam)) * _poly(coefs, lam), lams[-1], lam_t,
                    epsabs=1e-14, epsrel=1e-14)[0]
    assert abs(out.item() - (math.exp(-(lam_t - lams[-1])) * 0.8 + integral)) < 1e-12


def test_unip2_bh2_is_dpmpp_2m(gm2):
    y = gm2.prior_noise(16, 80.0, torch.Generator().manual_seed(1))
    s = get_sigmas_karras(12, 0.002, 80.0)
    torch.testing.assert_close(sample_unipc(gm2, y, s, variant="bh2", order=2, corrector=False),
                               sample_dpmpp_2m(gm2, y, s), rtol=1e-10, atol=1e-10)


def test_unip3_bh2_is_our_dpmpp_3m(gm2):
    """Two derivations of the third-order multistep step agree: UniP-3 solves for its weights, (3M)
    uses the Taylor weights (including the factor 2 on the second difference)."""
    y = gm2.prior_noise(16, 80.0, torch.Generator().manual_seed(1))
    s = get_sigmas_karras(12, 0.002, 80.0)
    torch.testing.assert_close(sample_unipc(gm2, y, s, variant="bh2", order=3, corrector=False),
                               sample_dpmpp_3m(gm2, y, s), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_final_step_to_zero(gm2, variant):
    """bh1's B(h) = -h is infinite on the step to 0; that step is first order (exactly x0_hat), so the
    output is finite, and every step reports to the callback."""
    y = gm2.prior_noise(16, 10.0, torch.Generator().manual_seed(4), dtype=torch.float32)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.2, 1e-4, 0.0], dtype=torch.float64)
    seen: list[dict] = []
    out = sample_unipc(gm2, y, sigmas, variant=variant, order=3, callback=seen.append)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert [info["i"] for info in seen] == list(range(5))
    assert torch.equal(out, seen[-1]["denoised"])


@pytest.mark.slow  # ~1 s
def test_converges_to_the_ode_solution_at_zero(gm2):
    y = gm2.prior_noise(32, 80.0, torch.Generator().manual_seed(5))
    exact = gm2.ode_solution(y, 80.0)
    err = (sample_unipc(gm2, y, get_sigmas_karras(40, 0.002, 80.0)) - exact).norm(dim=1).mean()
    assert err < 3e-3  # measured 1.5e-3 (the samples have norm ~1.2)


@pytest.mark.parametrize("grid", [[1.0, 2.0, 0.0], [3.0, float("nan"), 0.0], [2.0, -1.0], [5.0]])
def test_bad_grids_raise(grid):
    with pytest.raises(ValueError):
        sample_unipc(lambda y, s, c=None: y, torch.zeros(2, 2), torch.tensor(grid, dtype=torch.float64))


@pytest.mark.parametrize("options, match", [({"variant": "bh3"}, "allowed: bh1, bh2"), ({"order": 4}, "order")])
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        sample_unipc(lambda y, s, c=None: y, torch.zeros(2, 2), torch.tensor([1.0, 0.0]), **options)
