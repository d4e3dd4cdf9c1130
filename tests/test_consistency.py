"""Consistency models: the boundary condition of the ``consistency`` prediction and the consistency sampler."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from denoisekit.oracle import GaussianMixture  # noqa: E402
from denoisekit.prediction import (  # noqa: E402
    CONSISTENCY_SIGMA_MIN,
    Coefficients,
    Denoiser,
    x0_from_prediction,
)
from denoisekit.process import get_process  # noqa: E402
from denoisekit.samplers import SAMPLERS, STOCHASTIC  # noqa: E402
from denoisekit.samplers.run import nfe_of, sample, steps_for_nfe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_consistency_boundary_condition_is_exact_at_sigma_min():
    process = get_process("edm")
    t = process.t_from_sigma(torch.tensor([CONSISTENCY_SIGMA_MIN], dtype=torch.float64))
    c = Coefficients(process, t)
    y = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    x = y * c.alpha.view(-1, 1, 1, 1)
    out = torch.randn_like(y) * 100  # whatever the network says
    assert torch.equal(x0_from_prediction("consistency", out, x, c), x / c.alpha.view(-1, 1, 1, 1))


def test_consistency_sampler_one_and_multistep():
    assert "consistency" in SAMPLERS and "consistency" in STOCHASTIC
    assert [nfe_of("consistency", n) for n in (1, 2, 4)] == [1, 2, 4]
    assert steps_for_nfe("consistency", 2) == 2
    gmm = GaussianMixture.random(dim=2, components=3, seed=0)
    den = Denoiser(gmm.as_network(get_process("edm"), "eps"), get_process("edm"), "eps")
    g = torch.Generator().manual_seed(0)
    x1 = sample(den, (16, 2), sampler="consistency", nfe=1, generator=g, dtype=torch.float64)
    x2 = sample(den, (16, 2), sampler="consistency", nfe=2, generator=g, dtype=torch.float64)
    assert x1.shape == x2.shape == (16, 2) and torch.isfinite(x2).all()


def test_consistency_sampler_is_algorithm_1():
    """Evaluate at sigma_0, then per later level re-noise the estimate to x0 + sqrt(sigma^2 - sigma_min^2) z and
    evaluate again (Song et al. 2023, Alg. 1), z drawn from the generator in order."""
    from denoisekit._utils import randn_like
    from denoisekit.samplers import sample_consistency

    seen = []

    def f(y, sigma, cond=None):
        seen.append(float(sigma[0]))
        return 0.5 * y + 1.0

    x = torch.randn(3, 2, dtype=torch.float64)
    out = sample_consistency(f, x, torch.tensor([80.0, 0.8, 0.0], dtype=torch.float64),
                             generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x0 = 0.5 * x + 1.0
    want = 0.5 * (x0 + randn_like(x0, g) * (0.8**2 - CONSISTENCY_SIGMA_MIN**2) ** 0.5) + 1.0
    assert seen == [80.0, 0.8]
    torch.testing.assert_close(out, want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- the recipes' maths
def test_ict_curriculum_matches_song_dhariwal_eq_7():
    from denoisekit.train.recipes.consistency import ict_levels

    # K = 400k, s0 = 10, s1 = 1280 (their CIFAR-10 run): K' = 400k / (log2 128 + 1) = 50k, doubling every 50k steps
    got = [ict_levels(k, 400_000) for k in (0, 49_999, 50_000, 100_000, 150_000, 300_000, 349_999, 350_000, 399_999)]
    assert got == [11, 11, 21, 41, 81, 641, 641, 1281, 1281]
    assert ict_levels(7, 8, s0=10, s1=1280) == 1281 and ict_levels(6, 8) == 641  # K' = 1: one doubling a step
    assert ict_levels(5, 3, s0=2, s1=5) == 5 + 1  # floor(s1 / s0) = 2: K' = floor(3 / 2); capped at s1 + 1


def test_lognormal_level_probabilities_are_the_lognormal_mass_between_levels():
    from denoisekit.train.recipes.consistency import karras_levels, lognormal_level_probs

    levels = karras_levels(11, 80.0)
    assert levels[0] == pytest.approx(CONSISTENCY_SIGMA_MIN) and levels[-1] == pytest.approx(80.0)
    assert bool((levels[1:] > levels[:-1]).all())
    p = lognormal_level_probs(levels, -1.1, 2.0)
    normal = torch.distributions.Normal(torch.tensor(-1.1, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    mass = normal.cdf(torch.log(levels[1:])) - normal.cdf(torch.log(levels[:-1]))
    torch.testing.assert_close(p, mass / mass.sum(), rtol=1e-12, atol=0)
    assert p.sum().item() == pytest.approx(1.0)


def test_pseudo_huber_metric():
    from denoisekit.train.recipes.consistency import consistency_metric, huber_c

    a, b = torch.zeros(2, 1, 4), torch.tensor([[[3.0, 0, 0, 0]], [[0, 0, 0, 0]]])
    torch.testing.assert_close(consistency_metric(a, b, "pseudo_huber", 4.0), torch.tensor([1.0, 0.0]))  # 5 - 4
    torch.testing.assert_close(consistency_metric(a, b, "l2"), torch.tensor([9 / 4, 0.0]))
    small, big = torch.full((1, 8), 1e-4), torch.full((1, 8), 1e3)
    c = 0.03
    # quadratic below c (||d||^2 / 2c), linear above (||d|| - c): Charbonnier's interpolation
    assert consistency_metric(small, 0 * small, "pseudo_huber", c).item() == pytest.approx(8e-8 / (2 * c), rel=1e-3)
    assert consistency_metric(big, 0 * big, "pseudo_huber", c).item() == pytest.approx(1e3 * 8**0.5 - c, rel=1e-6)
    assert huber_c(3 * 32 * 32) == pytest.approx(0.0299, abs=1e-4)  # iCT's c = 0.03 on CIFAR-10
    with pytest.raises(ValueError, match="c > 0"):
        consistency_metric(a, b, "pseudo_huber", 0.0)
    with pytest.raises(ValueError, match="l2, pseudo_huber"):
        consistency_metric(a, b, "lpips")


@pytest.mark.parametrize("solver,sampler", [("heun", "heun"), ("euler", "euler"), ("dpmpp_2s", "dpmpp_2s")])
def test_teacher_ode_step_is_one_step_of_the_sampler(solver, sampler):
    """Per-sample levels in one batched call == the library's sampler on each sample's one-step grid."""
    from denoisekit.train.recipes.consistency import teacher_ode_step

    gmm = GaussianMixture.random(dim=2, components=3, seed=0)
    y = torch.randn(4, 2, dtype=torch.float64) * 3
    hi = torch.tensor([3.0, 0.5, 20.0, 0.01], dtype=torch.float64)
    lo = torch.tensor([2.0, 0.3, 12.0, 0.002], dtype=torch.float64)
    got = teacher_ode_step(gmm.denoise, y, hi, lo, solver)
    for i in range(4):
        want = SAMPLERS[sampler][0](gmm.denoise, y[i:i + 1], torch.tensor([hi[i], lo[i]], dtype=torch.float64))
        torch.testing.assert_close(got[i:i + 1], want, rtol=1e-12, atol=1e-12)


def _exact_consistency_function(gmm):
    """``f*(y, sigma)``: the exact probability-flow ODE solution from sigma to sigma_min, per level."""
    def f(y, sigma, cond=None):
        out = torch.empty_like(y, dtype=torch.float64)
        for s in torch.unique(sigma):
            m = sigma == s
            out[m] = gmm.ode_solution(y[m], float(s), CONSISTENCY_SIGMA_MIN, rtol=1e-8, atol=1e-8)
        return out
    return f


@pytest.mark.slow
def test_cd_target_at_the_optimum_is_the_teacher_ode_consistent_value():
    """With the exact consistency function as student and target and the exact GMM as teacher, the CD target
    f*(y^_n, sigma_n) equals f*(y_{n+1}, sigma_{n+1}) up to the teacher step's local error: Heun's shrinks at
    third order in the step, Euler's at second; so the CD loss at the optimum vanishes as N grows, and is far
    below the loss of a non-consistent f (the denoiser E[x0 | y])."""
    from denoisekit.train.recipes.consistency import consistency_distillation_loss, karras_levels, teacher_ode_step

    gmm = GaussianMixture.random(dim=2, components=3, seed=0)
    f = _exact_consistency_function(gmm)
    y0 = gmm.sample(32, generator=torch.Generator().manual_seed(0))
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hi = torch.full((32,), 1.0, dtype=torch.float64)
    y = y0 + z * hi[:, None]
    start = f(y, hi)
    errs = {}
    for solver in ("heun", "euler"):
        for h in (0.1, 0.05):
            lo = hi - h
            errs[solver, h] = (f(teacher_ode_step(gmm.denoise, y, hi, lo, solver), lo) - start).abs().max().item()
    assert errs["heun", 0.05] < 1e-3 and errs["heun", 0.1] / errs["heun", 0.05] > 6  # local error O(h^3)
    assert 2.5 < errs["euler", 0.1] / errs["euler", 0.05] < 5 and errs["heun", 0.05] < errs["euler", 0.05] / 10
    x0 = gmm.sample(16, generator=torch.Generator().manual_seed(2))
    opt = {n: consistency_distillation_loss(f, f, gmm.denoise, x0, torch.Generator().manual_seed(3),
                                            karras_levels(n, 80.0)).mean().item() for n in (6, 12)}
    bad = consistency_distillation_loss(gmm.denoise, gmm.denoise, gmm.denoise, x0, torch.Generator().manual_seed(3),
                                        karras_levels(12, 80.0)).mean().item()
    assert opt[12] < opt[6] / 10 and opt[12] < 1e-2 * bad, (opt, bad)


# ------------------------------------------------------------------------------------------------- a short training
SIGMA_MAX = 80.0
GRIDS = {1: [SIGMA_MAX], 2: [SIGMA_MAX, 0.8], 4: [SIGMA_MAX, 2.0, 0.8, 0.3]}  # re-noising levels of k-step sampling


def _consistency_sw(student, ref, steps, seed=2):
    from denoisekit.eval import sliced_wasserstein
    from denoisekit.samplers import sample_consistency

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ref.shape, generator=g) * SIGMA_MAX
    with torch.no_grad():
        y = sample_consistency(student, x, torch.tensor(GRIDS[steps] + [0.0], dtype=torch.float64), generator=g)
    return sliced_wasserstein(y, ref, n_projections=200)


def train_2d(method, gmm, steps, *, batch=256, lr=2e-3, mu=0.9, s1=40, hidden=64, seed=0):
    """The recipes' losses on a 2-D mixture with a small MLP (the exact mixture is CD's teacher): the student."""
    import copy

    from denoisekit.models import MLP
    from denoisekit.train.recipes.consistency import (consistency_distillation_loss, consistency_training_loss,
                                                      huber_c, ict_levels, karras_levels)

    torch.manual_seed(seed)
    process = get_process("edm")
    net = MLP(dim=2, hidden=hidden, depth=2)
    target_net = copy.deepcopy(net).requires_grad_(False)
    student = Denoiser(net, process, "consistency")
    target = Denoiser(target_net, process, "consistency")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    levels = karras_levels(18, SIGMA_MAX)
    for k in range(steps):
        g = torch.Generator().manual_seed(10_000 + k)
        x0 = gmm.sample(batch, generator=g).float()
        if method == "cd":
            loss = consistency_distillation_loss(student, target, gmm.denoise, x0, g, levels, solver="heun")
        else:
            loss = consistency_training_loss(student, x0, g, karras_levels(ict_levels(k, steps, 10, s1), SIGMA_MAX),
                                             c=huber_c(2))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        if method == "cd":
            with torch.no_grad():
                torch._foreach_lerp_(list(target_net.parameters()), [p.detach() for p in net.parameters()], 1 - mu)
    return student


@pytest.mark.slow
@pytest.mark.parametrize("method,steps", [("cd", 400), ("ict", 800)])
def test_short_training_makes_one_and_two_step_samples(method, steps):
    """On an 8-component 2-D mixture, 1- and 2-step consistency samples of a briefly trained student are far
    closer to the data (sliced W2) than the untrained student's and closer than a moment-matched Gaussian's.
    Measured here (status-consistency.md): cd 0.20 / 0.20 at 1 / 2 steps, ict 0.27 / 0.27; untrained 1.23;
    the Gaussian 0.34. (A short iCT run wants a short curriculum: s1 = 40 levels at the end, not 1280.)"""
    from denoisekit.eval import sliced_wasserstein

    gmm = GaussianMixture.random(dim=2, components=8, seed=0)
    ref = gmm.sample(2000, generator=torch.Generator().manual_seed(1)).float()
    untrained = _consistency_sw(train_2d(method, gmm, 0), ref, 1)
    gauss = torch.distributions.MultivariateNormal(ref.mean(0), torch.cov(ref.T))
    baseline = sliced_wasserstein(gauss.sample((2000,)), ref, n_projections=200)
    student = train_2d(method, gmm, steps)
    sw = {k: _consistency_sw(student, ref, k) for k in (1, 2)}
    assert untrained > 1.0 and 0.25 < baseline < 0.45, (untrained, baseline)
    assert max(sw.values()) < min(0.3 * untrained, 0.9 * baseline), (sw, untrained, baseline)


# ------------------------------------------------------------------------------------------------- the recipes on the engine
@pytest.mark.slow
def test_consistency_recipes_bad_input_is_one_line_nothing_written(tmp_path):
    from recipe_cases import consistency_distill, consistency_train

    from denoisekit.engine import Engine

    cases = [(consistency_distill.make, ["teacher.run=null"], ValueError, "teacher.run is not set"),
             (consistency_distill.make, ["process.prediction=edm"], ValueError, "process.prediction must be 'consistency'"),
             (consistency_train.make, ["process.prediction=eps"], ValueError, "process.prediction must be 'consistency'"),
             (consistency_train.make, ["process.name=ddpm"], ValueError, "VE noise spans"),
             (consistency_distill.make, [f"teacher.run={tmp_path / 'nope'}"], FileNotFoundError, "teacher.run")]
    for i, (make, overrides, error, match) in enumerate(cases):
        with pytest.raises(error, match=match) as e:
            Engine(make(tmp_path, *overrides), tmp_path / f"s{i}", progress=False).fit()
        assert "\n" not in str(e.value)
        assert not (tmp_path / f"s{i}" / "checkpoints").exists()


@pytest.mark.slow
def test_consistency_recipes_record_their_method_and_keep_the_target(tmp_path):
    import json

    from recipe_cases import consistency_distill, consistency_train

    from denoisekit.engine import Engine
    from denoisekit.engine.checkpoint import latest_checkpoint, load_checkpoint
    from denoisekit.train.run import load_run

    Engine(consistency_distill.make(tmp_path, "train.steps=2"), tmp_path / "cd", progress=False).fit()
    ck = latest_checkpoint(tmp_path / "cd" / "checkpoints")
    state = json.loads((ck / "state.json").read_text())
    assert state["fewstep"] == {"method": "consistency_distill", "levels": 6, "solver": "heun", "metric": "l2",
                                "mu": 0.9}
    extra, model = load_checkpoint(ck)["extra"], load_checkpoint(ck)["model"]
    assert extra.keys() == model.keys() and any(not torch.equal(extra[k], model[k]) for k in model)  # theta- != theta
    Engine(consistency_train.make(tmp_path, "train.steps=2"), tmp_path / "ict", progress=False).fit()
    ck = latest_checkpoint(tmp_path / "ict" / "checkpoints")
    state = json.loads((ck / "state.json").read_text())
    # N(k) of the last step k = 1 of K = 2: K' = max(floor(2 / (log2 8 + 1)), 1) = 1, min(2 * 2^1, 16) + 1 = 5
    assert state["fewstep"] == {"method": "consistency_train", "levels": 5, "s0": 2, "s1": 16,
                                "metric": "pseudo_huber"}
    assert not (ck / "recipe.safetensors").exists()  # no target network: the student under stop-grad
    den, config = load_run(tmp_path / "ict")  # an ordinary run: the consistency sampler draws from it
    assert config.process.prediction == "consistency"
    x = sample(den, (2, 1, 8, 8), sampler="consistency", nfe=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_multistep_grid_skips_sigma_min_where_the_model_is_the_identity():
    """At NFE n the consistency sampler evaluates n levels above sigma_min: the (n + 1)-step grid without its lowest
    positive level (an evaluation at sigma_min returns its input)."""
    from denoisekit.samplers.run import sampler_grid
    from denoisekit.schedules import get_sigmas

    process = get_process("edm")
    for n in (1, 2, 4):
        grid = sampler_grid(process, "consistency", "karras", n)
        full = get_sigmas(process, "karras", n + 1)
        assert len(grid) == n + 1 and grid[-1] == 0 and torch.equal(grid[:-1], full[:-2])
        assert grid[-2] > CONSISTENCY_SIGMA_MIN * 10
    seen = []
    gmm = GaussianMixture.random(dim=2, components=3, seed=0)
    den = Denoiser(gmm.as_network(process, "eps"), process, "eps")
    sample(den, (4, 2), sampler="consistency", nfe=2, schedule="karras", dtype=torch.float64,
           callback=lambda info: seen.append(float(info["sigma"])))
    assert len(seen) == 2 and min(seen) > CONSISTENCY_SIGMA_MIN * 10
