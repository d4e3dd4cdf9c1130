"""Probability-flow NLL against the closed-form Gaussian-mixture density, and the bits/dim conversion."""

import math

import pytest
import torch

from denoisekit import GaussianMixture, get_process
from denoisekit.eval.likelihood import bits_per_dim, dequantize, nll
from denoisekit.process import start_std

SIGMA_MIN = 1e-3
# The prior N(0, s^2) misses the marginal's mean m by O(|m| / sigma_max) nats per sample; at 1e4 that
# is ~1e-4, below the tolerance checked here.
SIGMA_MAX = 1e4


@pytest.mark.slow  # seconds of ODE solves
@pytest.mark.parametrize("dim", [2, 8])
def test_exact_nll_matches_closed_form(dim):
    gm = GaussianMixture.random(dim=dim, components=4, seed=1)
    x = gm.sample(16, torch.Generator().manual_seed(0))
    process = get_process("ddpm")  # VP prior std sqrt(1 + sigma^2)
    got = nll(gm, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, process=process, divergence="exact",
              rtol=1e-6, atol=1e-6)
    want = -gm.log_prob(x, SIGMA_MIN)
    assert got.shape == (16,) and got.dtype == torch.float64 and not got.requires_grad
    assert (got - want).abs().max() < 1e-3  # nats; NLLs here are O(1)-O(7)
    assert abs(got.sum() - want.sum()) / want.abs().sum() < 1e-4


@pytest.mark.slow  # seconds of ODE solves
def test_hutchinson_is_unbiased():
    gm = GaussianMixture.random(dim=8, components=4, seed=1)
    x = gm.sample(1, torch.Generator().manual_seed(0))
    kw = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=1e-6, atol=1e-6)
    exact = nll(gm, x, divergence="exact", **kw)
    for probe in ("rademacher", "gaussian"):
        est = nll(gm, x.repeat(256, 1), divergence="hutchinson", probe=probe,
                  generator=torch.Generator().manual_seed(1), **kw)
        assert est.std() > 1e-3  # really an estimate, not the exact trace
        sem = est.std() / math.sqrt(est.numel())
        assert abs(est.mean() - exact[0]) < 4 * sem, (probe, est.mean().item(), exact.item(), sem.item())


@pytest.mark.slow  # seconds of ODE solves
def test_hutchinson_seeded_and_auto_dispatch():
    gm = GaussianMixture.random(dim=20, components=2, seed=3)
    x = gm.sample(4, torch.Generator().manual_seed(0))
    kw = dict(sigma_min=1e-2, sigma_max=100.0)
    a = nll(gm, x, generator=torch.Generator().manual_seed(5), **kw)  # 20 > 16 dims: Hutchinson
    b = nll(gm, x, generator=torch.Generator().manual_seed(5), **kw)
    c = nll(gm, x, divergence="exact", **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_nll_image_shaped_input_and_cond_pass_through():
    gm = GaussianMixture.random(dim=4, components=3, seed=2)
    seen = []

    def den(y, sigma, cond=None):
        seen.append(cond)
        return gm(y.reshape(y.shape[0], -1), sigma).reshape(y.shape)

    x = gm.sample(3, torch.Generator().manual_seed(0))
    flat = nll(gm, x, sigma_min=1e-2, sigma_max=100.0)
    img = nll(den, x.reshape(3, 1, 2, 2), sigma_min=1e-2, sigma_max=100.0, cond="label")
    torch.testing.assert_close(img, flat)
    assert set(seen) == {"label"}


def test_bits_per_dim_by_hand():
    # 8-bit data in [-1, 1]: bin width 2/256, so bpd = nll / (d ln 2) - log2(2/256) = nll / (d ln 2) + 7.
    d = 3 * 32 * 32
    nats = torch.tensor([d * math.log(2) * 1.5, 0.0])
    torch.testing.assert_close(bits_per_dim(nats, d), torch.tensor([8.5, 7.0], dtype=torch.float64))
    # Data in [0, 1]: bin width 1/256, +8 bits; a uniform density on [0, 1]^d (nll 0) is exactly 8 bits.
    assert float(bits_per_dim(0.0, d, data_range=(0.0, 1.0))) == pytest.approx(8.0)


def test_dequantize_stays_in_bins():
    k = torch.arange(256, dtype=torch.float64).repeat(4, 1)
    x = k / 127.5 - 1
    u = dequantize(x, generator=torch.Generator().manual_seed(0))
    lo = -1 + k * 2 / 256
    assert ((u >= lo) & (u < lo + 2 / 256)).all()
    v = dequantize(x, generator=[torch.Generator().manual_seed(i) for i in range(4)])
    assert v.shape == x.shape and ((v >= lo) & (v < lo + 2 / 256)).all()


def test_start_std():
    assert start_std(80.0) == 80.0
    assert start_std(80.0, prior_std=2.0) == 2.0
    assert start_std(3.0, get_process("ddpm")) == pytest.approx(math.sqrt(10.0))


@pytest.mark.parametrize("kwargs", [
    dict(sigma_min=0.0, sigma_max=10.0),
    dict(sigma_min=10.0, sigma_max=1.0),
    dict(sigma_min=1e-2, sigma_max=10.0, divergence="trace"),
    dict(sigma_min=1e-2, sigma_max=10.0, probe="normal"),
    dict(sigma_min=1e-2, sigma_max=10.0, n_probes=0),
    dict(sigma_min=1e-2, sigma_max=10.0, rtol=0.0),
    dict(sigma_min=1e-2, sigma_max=10.0, prior_std=-1.0),
    dict(sigma_min=1e-2, sigma_max=10.0, prior_std=1.0, process=get_process("ve")),
])
def test_nll_bad_args(kwargs):
    gm = GaussianMixture.random(dim=2, components=2)
    with pytest.raises(ValueError):
        nll(gm, torch.zeros(2, 2, dtype=torch.float64), **kwargs)


def test_bits_per_dim_bad_args():
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 4, data_range=(1.0, -1.0))
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 4, levels=1)
