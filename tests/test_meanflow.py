"""MeanFlow (Geng et al. 2025): the identity and its loss against closed forms, the sampler's jump, the networks'
second time input (absent: the networks of before, bit for bit), a 2-D moons run against flow matching, bad input."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from denoisekit.models import MLP, DiT, UNet
from denoisekit.prediction import Denoiser
from denoisekit.process import get_process
from denoisekit.samplers import SAMPLERS, get_sampler
from denoisekit.samplers.meanflow import sample_meanflow
from denoisekit.train.meanflow import MeanFlowLoss, average_velocity_target, check_meanflow

pytestmark = pytest.mark.usefixtures("one_thread")
FLOW = get_process("flow")


class GaussianAverageVelocity(nn.Module):
    """The exact average velocity of 1-D data ``N(0, s^2)`` on the rectified flow, as a network
    ``net(z, t, cond, second_time=t - r)``: the ODE scales ``z`` by ``std(t) = sqrt((1 - t)^2 s^2 + t^2)``, so
    ``z_r = z_t std(r) / std(t)`` and ``u = z_t (1 - std(r) / std(t)) / (t - r)``."""

    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - t) ** 2 * self.s**2 + t**2)

    def forward(self, z: Tensor, t: Tensor, cond=None, *, second_time: Tensor) -> Tensor:
        r = t - second_time
        return z * ((1 - self.std(r) / self.std(t)) / second_time)[:, None]

    def velocity(self, z: Tensor, t: Tensor) -> Tensor:
        """The instantaneous velocity ``v = z std'(t) / std(t)``."""
        return z * (((t - 1) * self.s**2 + t) / self.std(t) ** 2)[:, None]


def test_the_identity_holds_for_an_exact_average_velocity():
    """With the marginal velocity ``v`` for ``v_t``, the target ``v - (t - r)(v d_z u + d_t u)`` of the JVP is ``u``
    itself (eq. 6): the sign of ``t - r``, the tangent ``(v, 1)`` and the second time input are all right."""
    net = GaussianAverageVelocity(0.3)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(64, generator=g, dtype=torch.float64)
    z = torch.randn(64, 1, generator=g, dtype=torch.float64) * net.std(t)[:, None]
    u, target = average_velocity_target(net, z, t, r, net.velocity(z, t))
    torch.testing.assert_close(target, u, rtol=1e-10, atol=1e-12)
    # and u jumps exactly: z_r = z_t - (t - r) u is the ODE's point at r
    torch.testing.assert_close(z - (t - r)[:, None] * u, z * (net.std(r) / net.std(t))[:, None])


class Linear(nn.Module):
    """``u = a z + b t + c (t - r)``: its total derivative along ``(dz, dt) = (v, 1)`` is ``a v + b + c``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (0.7, -0.4, 1.3))

    def forward(self, z: Tensor, t: Tensor, cond=None, *, second_time: Tensor | None = None) -> Tensor:
        h = torch.zeros_like(t) if second_time is None else second_time
        return self.a * z + (self.b * t + self.c * h)[:, None]


def test_loss_and_its_gradient_match_a_hand_computed_linear_network():
    net = Linear()
    den = Denoiser(net, FLOW, "flow")
    g = torch.Generator().manual_seed(1)
    x0, eps = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0.9, 0.5, 0.3, 0.7, 0.2, 0.6], dtype=torch.float64)
    r = torch.tensor([0.1, 0.5, 0.0, 0.7, 0.05, 0.2], dtype=torch.float64)  # r = t in rows 1 and 3
    loss = MeanFlowLoss(adaptive_p=1.0, adaptive_c=1e-3)
    weighted, sq = loss.terms(den, x0, t=t, r=r, eps=eps)
    a, b, c = 0.7, -0.4, 1.3
    z, v = (1 - t)[:, None] * x0 + t[:, None] * eps, eps - x0
    u = a * z + (b * t + c * (t - r))[:, None]
    target = v - (t - r)[:, None] * (a * v + b + c)
    want_sq = ((u - target) ** 2).sum(1)
    torch.testing.assert_close(sq.double(), want_sq)
    torch.testing.assert_close(weighted.double(), want_sq / (want_sq + 1e-3))
    weighted.sum().backward()  # the weight and the target are constants: d/da = sum w 2 (u - target) . z
    w = 1 / (want_sq + 1e-3)
    torch.testing.assert_close(net.a.grad, (w[:, None] * 2 * (u - target) * z).sum())
    torch.testing.assert_close(net.c.grad, (w[:, None] * 2 * (u - target) * (t - r)[:, None]).sum())
    # p = 0 is the plain squared error
    torch.testing.assert_close(MeanFlowLoss(adaptive_p=0)(den, x0, t=t, r=r, eps=eps).double(), want_sq)


def test_time_draws_are_sorted_and_split_by_the_ratio():
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    t, r = MeanFlowLoss(interval_ratio=0.25).draw_times(FLOW, 4000, gens)
    assert (r <= t).all() and ((r >= FLOW.t_min) & (t <= FLOW.t_max)).all()
    assert abs(float((r < t).double().mean()) - 0.25) < 0.03
    # per-sample generators: a sample's draw does not depend on the batch around it
    t2, r2 = MeanFlowLoss(interval_ratio=0.25).draw_times(FLOW, 3, [torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.equal(t2, t[:3]) and torch.equal(r2, r[:3])


def test_the_sampler_jumps_by_the_average_velocity():
    """Through the denoiser contract each step is a DDIM step with x0 aimed at the next level; in the flow's own
    frame it must be ``z_r = z_t - (t - r) u(z_t, r, t)`` exactly, for 1 and for 3 steps."""
    net = Linear()
    den = Denoiser(net, FLOW, "flow")
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    for times in ([0.95, 0.0], [0.95, 0.6, 0.25, 0.0]):
        ts = torch.tensor(times, dtype=torch.float64)
        sigmas = FLOW.sigma_ve(ts)
        got = sample_meanflow(den, z / (1 - ts[0]), sigmas) * (1 - ts[-1])  # VE frame in, native frame out
        want = z
        for t, r in zip(times[:-1], times[1:]):
            tt, rr = torch.full((5,), t, dtype=torch.float64), torch.full((5,), r, dtype=torch.float64)
            want = want - (t - r) * net(want, tt, second_time=tt - rr)
        torch.testing.assert_close(got.detach(), want.detach())
    assert "meanflow" in SAMPLERS


def test_the_sampler_on_an_ordinary_denoiser_is_ddim(gm2):
    from denoisekit.schedules import get_sigmas_karras

    y = gm2.prior_noise(16, 80.0, torch.Generator().manual_seed(0))
    s = get_sigmas_karras(6, 0.002, 80.0)
    torch.testing.assert_close(sample_meanflow(gm2, y, s), get_sampler("ddim")(gm2, y, s))


# ----------------------------------------------------------------------------------------- networks

def _fill(net: nn.Module) -> nn.Module:
    """Deterministic non-zero weights (the output layers start at zero), so a forward pass says something."""
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(0.2 * torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.37 + i).view_as(p))
    return net


SMALL = {
    "mlp": (MLP, dict(hidden=16, depth=2, emb_dim=8), (4, 2)),
    "unet": (UNet, dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                        head_channels=8, norm_groups=4, num_classes=3), (4, 1, 8, 8)),
    "dit": (DiT, dict(in_channels=1, patch=2, hidden=16, depth=2, heads=2, num_classes=3), (4, 1, 8, 8)),
}
#: What these networks computed before the second time input existed (the commit that added it, with
#: second_time absent): at torch.manual_seed(0), the sum of every initial parameter, and the sum of the output
#: with the weights of _fill on x = 0.1 * arange, t = 0.3, labels 1. Absent, a network must not change at all.
BEFORE = {"mlp": (28.010730464942753, -4.0739686191082), "unet": (188.81359830695556, -39.82620991021395),
          "dit": (6.216833332865235, 90.59957443922758)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_networks_without_a_second_time_are_unchanged(name):
    cls, kw, shape = SMALL[name]
    torch.manual_seed(0)
    net = cls(**kw)
    assert not any("second_time" in k for k in net.state_dict())
    init = sum(float(p.detach().double().sum()) for p in net.parameters())
    x = 0.1 * torch.arange(math.prod(shape), dtype=torch.float32).view(shape)
    cond = None if name == "mlp" else torch.ones(shape[0], dtype=torch.long)
    out = float(_fill(net)(x, torch.full((shape[0],), 0.3), cond).detach().double().sum())
    want_init, want_out = BEFORE[name]
    assert init == pytest.approx(want_init, rel=1e-12, abs=1e-12)
    assert out == pytest.approx(want_out, rel=1e-5)  # float32 sums: the order differs between CPUs' kernels
    with pytest.raises(ValueError, match="no second time input"):
        net(x, 0.3, cond, second_time=0.1)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_second_time_enters_and_defaults_to_zero(name):
    cls, kw, shape = SMALL[name]
    torch.manual_seed(0)
    net = _fill(cls(**kw, second_time=True))
    x = 0.1 * torch.arange(math.prod(shape), dtype=torch.float32).view(shape)
    cond = None if name == "mlp" else torch.ones(shape[0], dtype=torch.long)
    t = torch.full((shape[0],), 0.3)
    plain = net(x, t, cond)
    assert torch.equal(plain, net(x, t, cond, second_time=torch.zeros_like(t)))  # absent = 0: r = t
    assert not torch.allclose(plain, net(x, t, cond, second_time=torch.full_like(t, 0.2)))


# ----------------------------------------------------------------------------------------- the recipe

def _case():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from recipe_cases import meanflow

    return meanflow


@pytest.mark.parametrize("override, match", [
    ("process.name=edm", "process.name must be 'flow'"),
    ("process.prediction=eps", "process.prediction must be 'flow'"),
    ("process.time_input=log_sigma", "process.time_input must be 'model' or 't'"),
    ("model.second_time=false", "set model.second_time: true"),
    ("loss.weighting=min_snr", "set loss.weighting: simple"),
    ("fewstep.interval_ratio=1.5", "fewstep.interval_ratio"),
])
def test_recipe_bad_input_is_one_line_nothing_written(tmp_path, override, match):
    from denoisekit.engine import Engine

    with pytest.raises(ValueError, match=match) as e:
        Engine(_case().make(tmp_path, override), tmp_path / "run", progress=False).fit()
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_toy2d_and_check_bad_input_is_one_line():
    from denoisekit.train.toy2d import Toy2DConfig

    for kw, match in [(dict(process="ddpm"), "process must be 'flow'"), (dict(prediction="v"), "prediction must be"),
                      (dict(model_config={}), "model_config.second_time: true")]:
        args = {**dict(process="flow", prediction="flow", model="mlp", model_config={"second_time": True}), **kw}
        with pytest.raises(ValueError, match=match) as e:
            Toy2DConfig(loss=MeanFlowLoss(), **args)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="sigma_min 0"):
        check_meanflow(get_process("flow", sigma_min=0.01), "flow", "t", True)
    with pytest.raises(ValueError, match="interval_ratio"):
        MeanFlowLoss(interval_ratio=-0.1)


@pytest.mark.slow
def test_a_meanflow_run_is_an_ordinary_run(tmp_path, capsys):
    import json

    from denoisekit.cli import main
    from denoisekit.engine import Engine
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.generation import Guidance, generate
    from denoisekit.train.run import load_model

    run = tmp_path / "mf"
    Engine(_case().make(tmp_path, "train.steps=2"), run, progress=False).fit()
    state = json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())
    assert state["fewstep"]["method"] == "meanflow" and state["fewstep"]["interval_ratio"] == 0.5
    model = load_model(run)
    assert model.trained_steps is None  # every step count
    labels = torch.arange(4) % 10
    for sampler, nfe in (("meanflow", 1), ("meanflow", 3), ("flow_euler", 4)):  # others see u(z, t, t) = v
        x = generate(model, 4, labels, sampler=sampler, nfe=nfe, guidance=Guidance(), seed=0)
        assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="cannot pass its target levels") as e:
        generate(model, 4, labels, sampler="meanflow", nfe=1, guidance=Guidance(cfg_scale=2.0))
    assert "\n" not in str(e.value)
    assert main(["sample", str(run), "--sampler", "meanflow", "--nfe", "2", "--n", "4", "--cfg", "1",
                 "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()
    # an ordinary run's network has no second time input: one line, nothing written
    plain = tmp_path / "plain"
    from denoisekit.train.config import apply_overrides, config_from_dict
    from denoisekit.train.recipes import DiffusionRecipe

    overrides = [*_case().MEANFLOW, "train.steps=2", "train.recipe=diffusion", "model.second_time=false"]
    Engine(DiffusionRecipe(config_from_dict(apply_overrides(_case().CONFIG, overrides))), plain, progress=False).fit()
    capsys.readouterr()
    assert main(["sample", str(plain), "--sampler", "meanflow", "--nfe", "1", "--n", "2", "--cfg", "1",
                 "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("denoisekit: error: ") and err.count("\n") == 1 and "no second time input" in err, err
    assert not (tmp_path / "y.png").exists()


@pytest.mark.slow
def test_moons_one_step_is_close_to_flow_matching_at_20_nfe(tmp_path):
    """MeanFlow's 1-step samples against a flow-matching run of the same network, steps and data at 20 Euler steps.
    Measured (800 steps, hidden 64): sliced W2 0.102 at 1 step and 0.091 at 2 (MeanFlow), 0.113 at 20 and 0.916 at
    1 (flow matching); the data's own floor is 0.05. The bound is 1.5x."""
    from denoisekit.eval.toy2d import sliced_wasserstein
    from denoisekit.losses import DiffusionLoss
    from denoisekit.samplers.run import sample
    from denoisekit.train.recipes.toy2d import train_toy2d
    from denoisekit.train.toy2d import Toy2DConfig, held_out, load_run

    def train(name, loss, **model):
        config = Toy2DConfig(out=str(tmp_path / name), data="moons", n_train=20000, process="flow", prediction="flow",
                             model="mlp", model_config={"hidden": 64, **model}, loss=loss, steps=800)
        return load_run(train_toy2d(config, progress=False))

    def sw(den, config, sampler, nfe):
        with torch.no_grad():
            x = sample(den, (2000, 2), sampler=sampler, nfe=nfe, generator=torch.Generator().manual_seed(0))
        return sliced_wasserstein(x, held_out(config, 2000))

    mf, mf_config = train("mf", MeanFlowLoss(noise_levels="uniform"), second_time=True, time_scale=1e-3)
    fm, fm_config = train("fm", DiffusionLoss("uniform"))
    one, teacher = sw(mf, mf_config, "meanflow", 1), sw(fm, fm_config, "flow_euler", 20)
    assert one < 1.5 * teacher, (one, teacher)
    assert sw(fm, fm_config, "flow_euler", 1) > 3 * one  # what one step of the flow alone makes


@pytest.mark.parametrize("args, message", [
    (["--process", "flow", "--prediction", "flow"], "--objective meanflow needs a network with a second time input"),
    (["--model", "mlp", "--prediction", "flow"], "process must be 'flow'"),
    (["--model", "mlp", "--process", "flow", "--prediction", "eps"], "prediction must be 'flow'"),
])
def test_train2d_meanflow_bad_input_is_one_line_nothing_written(args, message, tmp_path, capsys):
    from denoisekit.cli import main

    out = tmp_path / "run"
    assert main(["train2d", "--objective", "meanflow", "--out", str(out), "--steps", "2", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("denoisekit: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
