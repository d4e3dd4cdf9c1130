"""Rectified-flow reflow (Liu et al. 2023): straightness against closed forms for Gaussian data, the ODE
coupling of the generation core, and the reflow recipe's bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from denoisekit.eval.straightness import straightness, velocity
from denoisekit.generation import LoadedModel
from denoisekit.oracle import GaussianMixture
from denoisekit.prediction import Denoiser
from denoisekit.process import RectifiedFlow
from denoisekit.train.recipes.reflow import ode_coupling

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.usefixtures("one_thread")

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
STD = torch.tensor([0.3, 2.0], dtype=torch.float64)
FLOW = RectifiedFlow()


def gaussian() -> GaussianMixture:
    return GaussianMixture(MU[None], torch.diag(STD**2)[None])


def closed_form_rate(std: torch.Tensor, n: int = 200_001) -> torch.Tensor:
    """Per dimension, ``int_0^1 (1 - s - r'(t))^2 dt`` for the 1-rectified flow of N(mu, s^2): its trajectory
    from z is ``(1 - t) mu + r(t) z``, ``r = sqrt((1 - t)^2 s^2 + t^2)``, so a sample's S is ``sum_d rate_d z_d^2``."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    r = torch.sqrt((1 - t) ** 2 * std**2 + t**2)
    dr = (t - (1 - t) * std**2) / r
    return torch.trapezoid((1 - std - dr) ** 2, t[:, 0], dim=0)


class Reflowed:
    """The exact 2-rectified flow of N(mu, diag s^2) as a VE denoiser: its coupling is z -> mu + s z, so on the
    line x = (1 - t)(mu + s z) + t z the velocity is the constant (1 - s) z - mu."""

    process = FLOW

    def __call__(self, y, sigma, cond=None):
        t = (sigma / (1 + sigma))[:, None].to(y)
        x = y * (1 - t)
        z = (x - (1 - t) * MU) / ((1 - t) * STD + t)
        return x - t * ((1 - STD) * z - MU)  # x0 = x_t - t v for alpha = 1 - t, sigma = t


def test_velocity_is_the_flow_target():
    """For rectified flow v = eps - x0: the exact denoiser's velocity at x_t = (1-t) x0 + t eps, averaged, is
    the exact x0 / eps posterior means' difference; here simply checked against the flow prediction adapter."""
    gm = gaussian()
    den = Denoiser(gm.as_network(FLOW, "flow"), FLOW, "flow")
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = 0.37
    want = den.net(x, torch.full((16,), t, dtype=torch.float64))  # the network's own velocity
    torch.testing.assert_close(velocity(den, x, t), want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(velocity(gm, x, t, process=FLOW), want, rtol=1e-9, atol=1e-9)


def test_one_rectified_flow_is_curved_as_the_closed_form():
    z = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = straightness(gaussian(), z, steps=400, process=FLOW)
    want = (closed_form_rate(STD) * z**2).sum(1)
    assert res.value > 0.1
    torch.testing.assert_close(res.per_sample, want, rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(res.end, MU + STD * z, rtol=1e-4, atol=1e-4)  # the monotone (OT) map
    with pytest.raises(ValueError, match="process"):
        straightness(gaussian(), z)  # a bare denoiser: one line, asks for process=


def test_reflowed_velocity_is_straight():
    """On the exact ODE coupling the reflowed velocity is constant along each line: S = 0 and one Euler step
    lands on the coupled sample."""
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for steps, method in ((1, "euler"), (5, "heun")):
        res = straightness(Reflowed(), z, steps=steps, method=method)
        assert res.value < 1e-12, (steps, method, res.value)
        torch.testing.assert_close(res.end, MU + STD * z, rtol=0, atol=1e-3)  # (from t_max = 1 - 1e-4)


def test_ode_coupling_makes_lines_that_do_not_cross():
    """The generation core's ODE coupling of the exact 1-RF is z -> mu + s z; on its straight lines the
    velocity target z - x0 is a function of (x_t, t) (least-squares residual ~ 0: the reflow loss can reach 0),
    while on independent pairs it is not (flow matching's irreducible loss)."""
    gm = gaussian()
    model = LoadedModel(Denoiser(gm.as_network(FLOW, "flow"), FLOW, "flow"), (2,))
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2000, 2, dtype=torch.float64, generator=g)
    x0 = ode_coupling(model, z, sampler="flow_rk4", nfe=256)  # 64 RK4 steps uniform in t; the last is Euler's
    torch.testing.assert_close(x0, MU + STD * z, rtol=0, atol=3e-3)

    def residual(x0, z, t):
        xt = (1 - t) * x0 + t * z
        feats = torch.cat([xt, torch.ones(len(xt), 1, dtype=xt.dtype)], 1)
        coef = torch.linalg.lstsq(feats, z - x0).solution
        return float(((feats @ coef - (z - x0)) ** 2).sum(1).mean())

    independent = gm.sample(2000, generator=g)
    for t in (0.2, 0.7):
        assert residual(x0, z, t) < 1e-4
        assert residual(independent, z, t) > 0.1


# ------------------------------------------------------------------------------------------------- the recipe
@pytest.mark.slow
def test_reflow_recipe_bad_input(tmp_path):
    from recipe_cases import consistency_distill, reflow

    from denoisekit.engine import Engine
    from denoisekit.train.config import apply_overrides, config_from_dict
    from denoisekit.train.recipes import ReflowRecipe
    from recipe_cases.diffusion import CONFIG

    def fit(*overrides):
        rec = ReflowRecipe(config_from_dict(apply_overrides(CONFIG, [*reflow.FLOW, "train.recipe=reflow",
                                                                     "train.steps=2", *overrides])))
        Engine(rec, tmp_path / "bad", progress=False).fit()

    with pytest.raises(ValueError, match="teacher.run is not set") as e:
        fit()
    assert "\n" not in str(e.value)
    edm = consistency_distill.teacher_run(tmp_path)
    with pytest.raises(ValueError, match="not a rectified flow") as e:
        fit(f"teacher.run={edm}")
    assert "\n" not in str(e.value)
    flow = reflow.teacher_run(tmp_path)
    with pytest.raises(ValueError, match="process.name must be 'flow'"):
        fit(f"teacher.run={flow}", "process.name=edm", "process.prediction=edm")
    with pytest.raises(ValueError, match="coupling_sampler"):
        fit(f"teacher.run={flow}", "fewstep.coupling_sampler=euler_ancestral")
    assert not (tmp_path / "bad" / "checkpoints").exists() or not any((tmp_path / "bad" / "checkpoints").iterdir())


def test_loss_trains_on_the_given_pair():
    """DiffusionLoss(eps=z, t=t) regresses the flow net onto the coupled pair's velocity z - x0 at
    x_t = (1 - t) x0 + t z, and draws nothing from the generator."""
    from denoisekit.losses import DiffusionLoss

    net = torch.nn.Linear(3, 2).double()
    den = Denoiser(lambda x, time, cond=None: net(torch.cat([x, time[:, None].to(x)], 1)), FLOW, "flow")
    g = torch.Generator().manual_seed(4)
    x0, z = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    xt = (1 - t[:, None]) * x0 + t[:, None] * z
    want = ((net(torch.cat([xt, t[:, None]], 1)) - (z - x0)) ** 2).mean(1)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    torch.testing.assert_close(DiffusionLoss()(den, x0, None, gen, eps=z, t=t), want.float())  # (float32 MSE)
    assert torch.equal(gen.get_state(), state)


@pytest.mark.slow
def test_reflow_student_is_an_ordinary_run(tmp_path):
    """A one-step reflow student (fewstep.one_step) trains, records its method and samples with load_run."""
    from recipe_cases import reflow

    from denoisekit.engine import Engine
    from denoisekit.io import load_json
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.samplers.run import sample
    from denoisekit.train.run import load_run

    Engine(reflow.make(tmp_path, "fewstep.one_step=true", "train.steps=2"), tmp_path / "run", progress=False).fit()
    state = load_json(latest_checkpoint(tmp_path / "run" / "checkpoints") / "state.json")
    assert state["fewstep"] == {"method": "reflow", "sampler": "flow_heun", "nfe": 3, "schedule": "auto",
                                "one_step": True}
    den, config = load_run(tmp_path / "run")
    assert config.train.recipe == "reflow" and den.process.name == "flow"
    x = sample(den, (2, 1, 8, 8), sampler="flow_euler", nfe=1, cond=torch.tensor([0, 1]),
               generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.slow
def test_two_rectified_flow_is_straight_and_one_step():
    """Liu et al. 2023's claim on an 8-component 2-D mixture, the teacher being its exact 1-rectified flow: a
    small 2-RF trained on the teacher's ODE coupling (DiffusionLoss with eps = the coupled noise, as the recipe
    does) has a much lower straightness, and its 1-Euler-step samples beat the exact teacher's 1 and 4 steps
    (measured: S 1.23 -> 0.016; sliced W2 at 1 step 1.15 -> 0.14, teacher at 4 steps 0.30)."""
    from denoisekit.eval.toy2d import sliced_wasserstein
    from denoisekit.generation import generate
    from denoisekit.losses import DiffusionLoss
    from denoisekit.models.mlp import MLP, MLPConfig

    gm = GaussianMixture.random(dim=2, components=8, seed=0)
    teacher = LoadedModel(Denoiser(gm.as_network(FLOW, "flow"), FLOW, "flow"), (2,))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8192, 2, generator=g)
    x = ode_coupling(teacher, z, sampler="flow_rk4", nfe=64)
    torch.manual_seed(0)
    den = Denoiser(MLP(MLPConfig(dim=2, hidden=64, depth=2)), FLOW, "flow", sigma_data=1.0)
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    for _ in range(600):
        i = torch.randint(0, len(z), (256,), generator=g)
        loss = DiffusionLoss()(den, x[i], None, g, eps=z[i]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref = gm.sample(4000, generator=torch.Generator().manual_seed(1)).float()
    zs = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    start = zs * float(FLOW.sigma_ve(FLOW.t_max))

    def measure(m):
        with torch.no_grad():
            s = straightness(m, zs[:500], steps=32).value
            sw = {k: sliced_wasserstein(generate(m, 2000, sampler="flow_euler", nfe=k, x_init=start).float(), ref,
                                        n_projections=200) for k in (1, 4)}
        return s, sw

    (s1, sw1), (s2, sw2) = measure(teacher), measure(LoadedModel(den, (2,)))
    assert s2 < 0.1 * s1, (s1, s2)
    assert sw2[1] < 0.3 * sw1[1] and sw2[1] < sw1[4], (sw1, sw2)
