"""Point-cloud metrics: zero on identical sets, growing with a shift, and closed-form translations."""

import math

import pytest
import torch

from denoisekit.eval import model_nll, sliced_wasserstein, wasserstein2
from denoisekit.prediction import Denoiser
from denoisekit.process import get_process


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids oversubscription on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cloud(n: int = 500, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_sets_have_zero_distance():
    x = cloud()
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    # a permutation is the same empirical measure
    perm = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))]
    assert wasserstein2(x, perm) == pytest.approx(0.0, abs=1e-12)


def test_translation_is_closed_form():
    # W2(mu, mu + v) = |v| (the identity matching is optimal); SW2 = |v| / sqrt(D) over uniform directions
    x, v = cloud(), torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert wasserstein2(x, x + v) == pytest.approx(0.5, rel=1e-9)
    assert sliced_wasserstein(x, x + v, n_projections=5000) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


def test_distances_grow_with_shift():
    x, y = cloud(400, 0), cloud(400, 1)
    w = [wasserstein2(x, y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    sw = [sliced_wasserstein(x, y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert w == sorted(w) and sw == sorted(sw)
    assert w[0] < 0.4 and w[-1] > 2.5  # two draws of N(0, I) are close; a shift of 2 in each coordinate is not


def test_w2_subsamples_and_sw_handles_unequal_sizes():
    x, y = cloud(3000, 0), cloud(100, 1)
    assert math.isfinite(wasserstein2(x, y, max_points=50))
    # with unequal sizes the 1-D quantiles are compared: a set against its own 3-fold repetition is 0 away
    assert sliced_wasserstein(x[:100].repeat(3, 1), x[:100]) == pytest.approx(0.0, abs=1e-12)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="dimension"):
        wasserstein2(cloud(), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(cloud(), torch.full((10, 2), math.nan))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        wasserstein2(torch.zeros(5), cloud())


def test_model_nll_of_exact_gaussian_denoiser():
    # N(0, I) data: the exact denoiser is y / (1 + sigma^2), and -log p_{sigma_min}(x) is closed-form
    process = get_process("edm")

    def net(x, time):  # EDM time input c_noise = log(sigma) / 4 -> sigma; x0 prediction
        sigma = torch.exp(4 * time)[:, None]
        return x / (1 + sigma**2)

    denoiser = Denoiser(net, process, "x0", time_input="log_sigma")
    x = cloud(8, 3)
    got = model_nll(denoiser, x, sigma_min=0.01, sigma_max=80.0)
    var = 1 + 0.01**2
    exact = 0.5 * (x**2).sum(1) / var + math.log(2 * math.pi * var)
    assert torch.allclose(got, exact, atol=2e-3)
