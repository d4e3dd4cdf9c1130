import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit.losses import DiffusionLoss, sample_times
from denoisekit.prediction import Coefficients


def test_optimal_denoiser_minimises_the_loss(gm2):
    """The exact denoiser's loss is below that of a perturbed one, for every prediction and weighting."""
    x0 = gm2.sample(4096, torch.Generator().manual_seed(0)).float()
    for proc, pred in [("ddpm", "eps"), ("vp_cosine", "v"), ("flow", "flow"), ("edm", "x0"), ("ve", "score")]:
        p = get_process(proc)
        exact = Denoiser(gm2.as_network(p, pred), p, pred)
        worse = Denoiser(lambda x, t, n=gm2.as_network(p, pred): n(x, t) * 1.05 + 0.02, p, pred)
        for loss in [DiffusionLoss(), DiffusionLoss(weighting="min_snr"), DiffusionLoss("lognormal", "edm"),
                     DiffusionLoss(weighting="soft_min_snr"), DiffusionLoss("logit_normal", p_mean=0, p_std=1)]:
            a = loss(exact, x0, generator=torch.Generator().manual_seed(1)).mean()
            b = loss(worse, x0, generator=torch.Generator().manual_seed(1)).mean()
            assert torch.isfinite(a) and a < b, (proc, pred, loss)


def test_simple_eps_loss_is_ddpm_eq14():
    p = get_process("ddpm")
    net = lambda x, t: torch.zeros_like(x)  # noqa: E731  predicts eps = 0: loss = E||eps||^2 per dim = 1
    loss = DiffusionLoss()(Denoiser(net, p, "eps"), torch.randn(20000, 4), generator=torch.Generator().manual_seed(0))
    assert loss.mean().item() == pytest.approx(1.0, abs=0.02)


def test_min_snr_weights_per_prediction():
    """Hang et al. 2023: min(SNR, g)/SNR for eps, min(SNR, g)/(SNR + 1) for v, on the native loss."""
    p = get_process("ddpm")
    x0 = torch.randn(512, 3)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    for pred, ref in [("eps", lambda snr: torch.clamp(snr, max=5) / snr),
                      ("v", lambda snr: torch.clamp(snr, max=5) / (snr + 1))]:
        den = Denoiser(zero, p, pred)
        weighted = DiffusionLoss(weighting="min_snr")(den, x0, generator=gen())
        simple = DiffusionLoss()(den, x0, generator=gen())
        t = sample_times(p, 512, generator=gen())
        c = Coefficients(p, t)
        assert torch.allclose(weighted, simple * ref((c.alpha / c.sigma) ** 2).float(), rtol=1e-5)


def test_edm_loss_on_edm_prediction_is_plain_mse():
    p = get_process("edm")
    den = Denoiser(lambda x, t: torch.zeros_like(x), p, "edm")
    x0 = torch.randn(256, 2)
    a = DiffusionLoss("lognormal", "edm")(den, x0, generator=torch.Generator().manual_seed(0))
    b = DiffusionLoss("lognormal", "simple")(den, x0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, rtol=1e-5)


def test_sample_times_ranges():
    for name in ["ddpm", "vp_linear", "edm", "flow"]:
        p = get_process(name)
        for kind in ["uniform", "lognormal", "logit_normal"]:
            t = sample_times(p, 1000, kind, generator=torch.Generator().manual_seed(0))
            assert t.min() >= p.t_min and t.max() <= p.t_max
    idx = sample_times(get_process("ddpm"), 100, generator=torch.Generator().manual_seed(0)) * 999
    assert torch.allclose(idx, idx.round())


def test_bad_options():
    with pytest.raises(ValueError, match="allowed: .*min_snr"):
        DiffusionLoss(weighting="p2")
    with pytest.raises(ValueError, match="allowed: .*lognormal"):
        DiffusionLoss(noise_levels="beta")
    with pytest.raises(ValueError, match="gamma"):
        DiffusionLoss(gamma=0)
