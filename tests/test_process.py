import math

import pytest
import torch

from denoisekit.process import PROCESSES, SIGMA_VE_CAP, DiscreteDDPM, get_process


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_inverse_maps_round_trip(name):
    p = get_process(name)
    t = torch.linspace(p.t_min, p.t_max, 101, dtype=torch.float64)
    assert torch.allclose(p.t_from_sigma(p.sigma_ve(t)), t, atol=1e-9)
    assert torch.allclose(p.t_from_log_snr(p.log_snr(t)), t, atol=1e-9)
    lam = p.log_snr(t)
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease in t"
    assert torch.allclose(lam, -2 * torch.log(p.sigma_ve(t)))


@pytest.mark.parametrize("name", ["ddpm", "vp_linear", "vp_cosine", "vp_sigmoid"])
def test_variance_preserving(name):
    p = get_process(name)
    t = torch.linspace(p.t_min, p.t_max, 50, dtype=torch.float64)
    assert torch.allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_derivatives_match_finite_differences(name):
    p = get_process(name)
    t = torch.linspace(p.t_min + 0.05, min(p.t_max, 0.95), 7, dtype=torch.float64)
    da, ds = p.derivatives(t)
    h = 1e-6
    assert torch.allclose(da, (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-4, atol=1e-6)
    assert torch.allclose(ds, (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), rtol=1e-4, atol=1e-6)


def test_ddpm_alphas_cumprod_is_ddpms():
    p = DiscreteDDPM()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.equal(p.alphas_cumprod, torch.cumprod(1 - betas, 0))
    # 4.035e-5 is alpha_bar_T of Ho et al.'s schedule: sigma_ve at the last step is ~157.4
    assert p.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)
    # step indices are where diffusers' U-Nets expect them, and grid points are exact
    idx = torch.tensor([0.0, 17.0, 999.0], dtype=torch.float64)
    assert torch.allclose(p.model_time(idx / 999), idx)
    assert torch.allclose(p.sigma_ve(idx / 999), p.timestep_sigmas(idx), rtol=1e-12)


def test_zero_terminal_snr_rescale():
    base, z = DiscreteDDPM(), DiscreteDDPM(rescale_zero_snr=True)
    assert z.alphas_cumprod[0] == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    assert z.sigma_max == pytest.approx(SIGMA_VE_CAP, rel=1e-6)
    # before the capped last step the rescaled chain is Lin et al.'s: sqrt(alpha_bar) shifted and scaled
    s = base.alphas_cumprod.sqrt()
    expect = ((s - s[-1]) * s[0] / (s[0] - s[-1])) ** 2
    assert torch.allclose(z.alphas_cumprod[:-1], expect[:-1], rtol=1e-12)


def test_flow_and_edm_definitions():
    f = get_process("flow")
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(f.alpha(t), 1 - t) and torch.allclose(f.sigma(t), t)
    e = get_process("edm")
    assert e.sigma_min == pytest.approx(0.002) and e.sigma_max == pytest.approx(80.0)
    assert f.sigma_max == pytest.approx(SIGMA_VE_CAP, rel=1e-6)


def test_add_noise_matches_definition():
    p = get_process("vp_cosine")
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    x = p.add_noise(x0, eps, t)
    expect = p.alpha(t).float()[:, None] * x0 + p.sigma(t).float()[:, None] * eps
    assert torch.allclose(x, expect)


def test_prior_conventions():
    assert get_process("ddpm").prior_std(3.0).item() == pytest.approx(math.sqrt(10))
    assert get_process("edm").prior_std(80.0).item() == pytest.approx(80.0)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="allowed: .*ddpm.*edm.*flow"):
        get_process("ddpn")
    with pytest.raises(ValueError, match="beta_schedule"):
        DiscreteDDPM(beta_schedule="quadratic")
    with pytest.raises(ValueError):
        get_process("ve", sigma_min=5.0, sigma_max=1.0)


def test_flow_sigma_min_is_lipmans_ot_path():
    """``flow(sigma_min=s)`` is the optimal-transport path of Lipman et al. 2022 (eq. 20, time reversed):
    x_t = (1 - t) x0 + (s + (1 - s) t) eps, velocity target (1 - s) eps - x0 (eq. 23); s = 0 is rectified flow."""
    from denoisekit.prediction import Coefficients, prediction_target

    plain, ot = get_process("flow"), get_process("flow", sigma_min=0.01)
    t = torch.linspace(0, ot.t_max, 11, dtype=torch.float64)
    assert torch.equal(plain.sigma(t), t) and plain.t_min == 1e-3
    assert torch.allclose(ot.sigma(t), 0.01 + 0.99 * t) and torch.equal(ot.alpha(t), 1 - t)
    assert ot.t_min == 0 and math.isclose(ot.sigma_min, 0.01)
    assert torch.allclose(ot.t_from_sigma(ot.sigma_ve(t)), t, atol=1e-9)
    assert float(ot.t_from_sigma(1e-3)) == 0.0  # below the floor: the path's start
    x0, eps = torch.randn(2, 5, 3, dtype=torch.float64)
    tt = torch.full((5,), 0.3, dtype=torch.float64)
    target = prediction_target("flow", x0, eps, Coefficients(ot, tt))
    assert torch.allclose(target, 0.99 * eps - x0)
    for bad in (-0.1, 1.0, "0.1"):
        with pytest.raises(ValueError, match="0 <= sigma_min < 1"):
            get_process("flow", sigma_min=bad)
