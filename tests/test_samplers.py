"""Exact-oracle tests of the Euler/DDIM/DDPM/Heun/flow/PC/adaptive samplers (DPM-Solver and UniPC have
their own files). Grids end at a nonzero sigma_min, so the error is pure discretisation error."""

import math

import numpy as np
import pytest
import torch

from denoisekit import get_sampler
from denoisekit._utils import seeded_generators
from denoisekit.samplers import (SAMPLERS, sample_ddim, sample_ddim_inversion, sample_ddpm, sample_euler,
                                 sample_euler_ancestral, sample_flow_euler, sample_flow_heun, sample_flow_rk4,
                                 sample_heun, sample_ode, sample_pc)
from denoisekit.schedules import get_sigmas_karras

S_MIN, S_MAX = 0.05, 40.0


def _start(gm, n=128, seed=0):
    return gm.prior_noise(n, S_MAX, torch.Generator().manual_seed(seed))


def _grid(n):
    return get_sigmas_karras(n, S_MIN, S_MAX)[:-1]  # ends at S_MIN, not 0


_EXACT: dict[int, torch.Tensor] = {}


def _order(gm, sampler, steps):
    y = _start(gm)
    if id(gm) not in _EXACT:  # the tight-tolerance reference is the expensive part: solve it once
        _EXACT[id(gm)] = gm.ode_solution(y, S_MAX, S_MIN)
    exact = _EXACT[id(gm)]
    errs = [(sampler(gm, y, _grid(n)) - exact).norm(dim=1).mean().item() for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    return slope, errs


@pytest.mark.parametrize("sampler, order, steps", [
    (sample_euler, 1, [40, 80, 160]),
    (sample_heun, 2, [20, 40, 80]),
    (sample_flow_euler, 1, [40, 80, 160]),
    (sample_flow_heun, 2, [20, 40, 80]),
    (sample_flow_rk4, 4, [40, 80, 160]),  # asymptotic only past ~40 steps: ratios 11.5, 12.2, 14.3
])
def test_convergence_order(gm2, sampler, order, steps):
    slope, errs = _order(gm2, sampler, steps)
    assert slope > order - 0.35, f"observed order {slope:.2f} from errors {errs}"


def test_ddim_is_euler_is_flow_euler(gm2):
    y, s = _start(gm2), get_sigmas_karras(12, 0.002, S_MAX)
    a = sample_ddim(gm2, y, s)
    assert torch.allclose(a, sample_euler(gm2, y, s), atol=0, rtol=0)
    assert torch.allclose(a, sample_flow_euler(gm2, y, s), atol=1e-12)


def test_ddim_eta_one_is_ddpm_posterior(gm2):
    y, s = _start(gm2), get_sigmas_karras(12, 0.002, S_MAX)
    a = sample_ddim(gm2, y, s, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = sample_ddpm(gm2, y, s, variance="small", generator=torch.Generator().manual_seed(3))
    c = sample_euler_ancestral(gm2, y, s, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(a, c, atol=0)


@pytest.mark.slow  # ~1 s
def test_ddim_inversion_round_trip(gm2):
    """Inversion converges at first order to the exact ODE encoding, and sampling returns the start.
    Medians: a point on a boundary between modes is chaotic under the ODE and dominates a mean."""
    x0 = gm2.sample(64, torch.Generator().manual_seed(1))
    exact = gm2.ode_solution(x0, 0.01, S_MAX)
    enc, back = [], []
    for n in (25, 100, 400):
        up = get_sigmas_karras(n, 0.01, S_MAX)[:-1].flip(0)
        latent = sample_ddim_inversion(gm2, x0, up)
        enc.append((latent - exact).norm(dim=1).mean().item())
        back.append((sample_ddim(gm2, latent, up.flip(0)) - x0).norm(dim=1).median().item())
    assert enc[0] / enc[1] > 3.5 and enc[1] / enc[2] > 3.5, enc  # 4x per 4x steps: first order
    assert back[0] > back[1] > back[2] and back[2] < 0.01, back


def test_adaptive_ode_matches_exact(gm2):
    y = _start(gm2, 32)
    s = torch.tensor([S_MAX, 1.0, 0.0], dtype=torch.float64)
    seen = []
    out = sample_ode(gm2, y, s, rtol=1e-7, atol=1e-7, callback=lambda d: seen.append(d["i"]))
    assert torch.allclose(out, gm2.ode_solution(y, S_MAX), atol=1e-4)
    assert seen == [0, 1]


def _mean_logp_gap(gm, x, n_true=4000):
    true = gm.sample(n_true, torch.Generator().manual_seed(9))
    return abs(gm.log_prob(x).mean().item() - gm.log_prob(true).mean().item())


# Ancestral sampling converges slowly in the step count (gaps in nats at 30/60/120/240 Karras steps for
# ddpm: 0.26, 0.18, 0.11, 0.07): the step counts below are where each is within tolerance of exact.
# A broken sampler is off by > 1 nat (8-step DDPM: -2.6).
@pytest.mark.slow  # hundreds of stochastic steps (~1 s each)
@pytest.mark.parametrize("name, steps, tol", [("ddpm", 400, 0.1), ("ddpm_large", 400, 0.1),
                                              ("euler_ancestral", 400, 0.1), ("heun_sde", 60, 0.12),
                                              ("pc", 120, 0.15)])
def test_stochastic_samplers_reproduce_the_mixture(gm2, name, steps, tol):
    y = gm2.prior_noise(2000, 80.0, torch.Generator().manual_seed(4))
    x = get_sampler(name)(gm2, y, get_sigmas_karras(steps, 0.002, 80.0), generator=torch.Generator().manual_seed(5))
    assert _mean_logp_gap(gm2, x) < tol


def test_stochastic_sampler_is_not_the_ode(gm2):
    y, s = _start(gm2), get_sigmas_karras(20, 0.002, S_MAX)
    a = sample_ddpm(gm2, y, s, generator=torch.Generator().manual_seed(0))
    assert (a - sample_ddim(gm2, y, s)).abs().max() > 1e-2


def test_per_sample_generators_make_samples_batch_independent(gm2):
    s = get_sigmas_karras(8, 0.002, S_MAX)
    y = _start(gm2, 6)
    full = sample_ddpm(gm2, y, s, generator=seeded_generators(7, 6))
    part = sample_ddpm(gm2, y[2:4], s, generator=seeded_generators(9, 2))
    assert torch.allclose(full[2:4], part)


def test_heun_churn_adds_noise_only_in_range(gm2):
    y, s = _start(gm2, 16), get_sigmas_karras(10, 0.002, S_MAX)
    det = sample_heun(gm2, y, s)
    none_in_range = sample_heun(gm2, y, s, s_churn=40, s_tmin=100.0, s_tmax=200.0,
                                generator=torch.Generator().manual_seed(0))
    assert torch.allclose(det, none_in_range)
    assert (sample_heun(gm2, y, s, s_churn=40, generator=torch.Generator().manual_seed(0)) - det).abs().max() > 1e-3


def test_pc_corrector_improves_few_step_ancestral(gm2):
    y = gm2.prior_noise(2000, 80.0, torch.Generator().manual_seed(4))
    s = get_sigmas_karras(8, 0.002, 80.0)
    plain = sample_ddpm(gm2, y, s, generator=torch.Generator().manual_seed(1))
    pc = sample_pc(gm2, y, s, snr=0.1, corrector_steps=2, generator=torch.Generator().manual_seed(1))
    assert _mean_logp_gap(gm2, pc) < _mean_logp_gap(gm2, plain)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_registered_sampler_runs_to_zero_and_reports(gm2, name):
    y, s = _start(gm2, 8), get_sigmas_karras(10, 0.002, S_MAX)
    steps = []
    out = get_sampler(name)(gm2, y, s, generator=torch.Generator().manual_seed(0),
                            callback=lambda d: steps.append(d["i"]))
    assert out.shape == y.shape and torch.isfinite(out).all()
    assert steps == list(range(10))
    # 10 steps must land near the data: mean log-likelihood -58549 at the start, -0.2 to -60 after
    # 10 steps (higher-order methods land worst on this sharp mixture at so few steps)
    assert gm2.log_prob(out).mean() > -100


def test_nan_from_model_names_the_step(gm2):
    def bad(y, sigma, cond=None):
        out = gm2(y, sigma)
        return out * math.nan if sigma[0] < 5 else out

    with pytest.raises(FloatingPointError, match=r"step \d+ \(sigma="):
        sample_euler(bad, _start(gm2, 4), get_sigmas_karras(10, 0.002, S_MAX))


def test_bad_inputs():
    with pytest.raises(ValueError, match="allowed: .*dpmpp_2m"):
        get_sampler("dpm++2m")
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_euler(lambda y, s, c=None: y, torch.zeros(2, 2), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="variance"):
        sample_ddpm(lambda y, s, c=None: y, torch.zeros(2, 2), torch.tensor([1.0, 0.0]), variance="medium")
