import typing

import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit.losses import DiffusionLoss
from denoisekit.prediction import (PREDICTIONS, Coefficients, Prediction, PredictionRule, prediction_from_x0,
                                   prediction_target, x0_from_prediction, x0_mse_factor)

PROCS = ["ddpm", "vp_linear", "vp_cosine", "ve", "edm", "flow"]


def _setup(name, b=5, d=3):
    p = get_process(name)
    t = torch.linspace(p.t_min + 0.01, p.t_max - 0.01, b, dtype=torch.float64)
    c = Coefficients(p, t)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    eps = torch.randn(b, d, generator=g, dtype=torch.float64)
    return p, c, x0, eps, p.add_noise(x0, eps, t)


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("name", PROCS)
def test_conversions_round_trip(kind, name):
    _, c, x0, eps, x = _setup(name)
    target = prediction_target(kind, x0, eps, c)
    assert torch.allclose(x0_from_prediction(kind, target, x, c), x0, atol=1e-8)
    assert torch.allclose(prediction_from_x0(kind, x0, x, c), target, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("name", PROCS)
def test_mse_factor_converts_errors(kind, name):
    """A network error delta moves x0_hat by delta / sqrt(k): the weighting conversion is exact."""
    _, c, x0, eps, x = _setup(name)
    target = prediction_target(kind, x0, eps, c)
    delta = 1e-3 * torch.randn_like(target)
    dx0 = x0_from_prediction(kind, target + delta, x, c) - x0
    k = x0_mse_factor(kind, c)
    assert torch.allclose(delta.pow(2).sum(1), k * dx0.pow(2).sum(1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "flow", "score"])
@pytest.mark.parametrize("name", PROCS)
def test_adapter_recovers_exact_denoiser(gm2, kind, name):
    """Any prediction type, through the adapter, is the same denoiser in the VE frame."""
    p = get_process(name)
    den = Denoiser(gm2.as_network(p, kind), p, kind)
    y = torch.randn(7, 2, dtype=torch.float64) * 3
    sigma = torch.logspace(-1.5, 1.5, 7, dtype=torch.float64)
    assert torch.allclose(den(y, sigma), gm2(y, sigma), atol=1e-7)


def test_edm_preconditioning_adapter(gm2):
    """With prediction="edm" the network sees c_in * y and c_noise, and D = c_skip y + c_out F."""
    p = get_process("edm")
    seen = {}

    def net(inp, c_noise):
        sigma = torch.exp(4 * c_noise.double())
        c = Coefficients(p, p.t_from_sigma(sigma))
        c_skip, c_out, c_in, _ = c.edm()
        y = inp / c_in[:, None]
        seen["c_in"] = c_in
        return (gm2(y, sigma) - c_skip[:, None] * y) / c_out[:, None]

    den = Denoiser(net, p, "edm")
    y = torch.randn(4, 2, dtype=torch.float64) * 5
    sigma = torch.tensor([0.01, 0.5, 5.0, 50.0], dtype=torch.float64)
    assert torch.allclose(den(y, sigma), gm2(y, sigma), atol=1e-8)
    assert torch.allclose(seen["c_in"], 1 / torch.sqrt(sigma**2 + 0.25))


def test_external_callable_with_class_condition():
    p = get_process("ddpm")
    calls = {}

    def unet(x, timestep, labels):  # a diffusers-like signature: integer-ish timesteps 0..999
        calls["t"], calls["labels"] = timestep, labels
        return torch.zeros_like(x)

    den = Denoiser(unet, p, "eps")
    sigma = p.timestep_sigmas(torch.tensor([999, 500]))
    out = den(torch.ones(2, 1, 4, 4), sigma, torch.tensor([3, 4]))
    assert torch.allclose(calls["t"].double(), torch.tensor([999.0, 500.0], dtype=torch.float64), atol=1e-3)
    assert calls["labels"].tolist() == [3, 4]
    assert torch.allclose(out, torch.ones(2, 1, 4, 4))  # eps = 0 -> x0 = y


def test_bad_prediction_and_shape():
    p = get_process("ddpm")
    with pytest.raises(ValueError, match="allowed: consistency, edm, eps, flow, score, v, x0"):
        Denoiser(lambda x, t: x, p, "epsilon")
    den = Denoiser(lambda x, t: x[:, :1], p, "eps")
    with pytest.raises(ValueError, match="network returned shape"):
        den(torch.zeros(2, 3), 1.0)


# ---------------------------------------------------------------------------------------------
# The table: a new parameterisation is one entry


def test_table_matches_the_literal():
    assert typing.get_args(Prediction) == tuple(PREDICTIONS)
    assert all(isinstance(rule, PredictionRule) for rule in PREDICTIONS.values())


def _residual_rule():
    """``x0 = y + F`` with EDM's input ``c_in y`` and ``c_noise``: Karras et al.'s form with c_skip = c_out = 1."""

    def b(v, x):  # (B,) -> broadcastable against x (B, ...)
        return v.to(x).reshape(-1, *[1] * (x.ndim - 1))

    return PredictionRule(
        x0=lambda out, x, c: x / b(c.alpha, x) + out,
        target=lambda x0, eps, c: -b(c.sigma_ve, x0) * eps,  # x0 - y
        x0_mse_factor=lambda c: torch.ones_like(c.alpha),
        net_input=lambda x, c: x / b(c.alpha, x) * b(c.edm()[2], x),
        time_input="log_sigma")


def test_new_parameterisation_is_one_entry(monkeypatch, gm2):
    """A temporary entry in PREDICTIONS trains and denoises through Denoiser and DiffusionLoss with no other
    change: its conversions invert, the exact network through it is the exact denoiser, the SNR-weighted loss
    (a loss on the x0 error) equals the eps model's, and a small network trains on it. The table is restored."""
    with monkeypatch.context() as m:
        m.setitem(PREDICTIONS, "residual", _residual_rule())
        for name in PROCS:  # the checks every entry of the table passes
            test_conversions_round_trip("residual", name)
            test_mse_factor_converts_errors("residual", name)

        def exact(inp, c_noise):  # what the exact network outputs, given the entry's preconditioned input
            sigma = torch.exp(4 * c_noise.double())
            y = inp * torch.sqrt(sigma**2 + 0.25)[:, None]
            return gm2(y, sigma) - y

        y = torch.randn(5, 2, dtype=torch.float64) * 3
        sigma = torch.logspace(-1.5, 1.5, 5, dtype=torch.float64)
        x0 = gm2.sample(2048, torch.Generator().manual_seed(0))
        for name in ("edm", "vp_cosine", "flow"):
            p = get_process(name)
            den = Denoiser(exact, p, "residual")  # time_input "model", overridden by the entry's "log_sigma"
            torch.testing.assert_close(den(y, sigma), gm2(y, sigma), rtol=1e-9, atol=1e-9)
            eps_den = Denoiser(gm2.as_network(p, "eps"), p, "eps")
            loss = DiffusionLoss("lognormal", "snr")
            a = loss(den, x0, generator=torch.Generator().manual_seed(1))
            b = loss(eps_den, x0, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)

        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2)).double()
        den = Denoiser(lambda x, t: mlp(torch.cat([x, t[:, None]], 1)), get_process("edm"), "residual")
        opt = torch.optim.Adam(mlp.parameters(), lr=3e-3)
        loss = DiffusionLoss("lognormal", "edm")
        first = loss(den, x0, generator=torch.Generator().manual_seed(2)).mean().item()
        for step in range(60):
            opt.zero_grad()
            loss(den, x0[:256], generator=torch.Generator().manual_seed(10 + step)).mean().backward()
            opt.step()
        assert loss(den, x0, generator=torch.Generator().manual_seed(2)).mean().item() < 0.7 * first
    assert "residual" not in PREDICTIONS
    with pytest.raises(ValueError, match="allowed: consistency, edm, eps, flow, score, v, x0"):
        Denoiser(exact, get_process("edm"), "residual")
