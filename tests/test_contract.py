"""The denoiser contract (denoiser.py): the process is declared and forwarded by every wrapper, and the clock
(prediction.Clock) is exactly what a Denoiser feeds its network, for every process, time input and prediction."""

from pathlib import Path

import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit.denoiser import DenoiserFn, DenoiserWrapper
from denoisekit.guidance import ClassifierFreeGuidance, ClassifierGuidance
from denoisekit.models.classifier import NoisyClassifier
from denoisekit.prediction import PREDICTIONS, TIME_INPUTS, Clock, Coefficients

PROCS = ["ddpm", "vp_linear", "vp_cosine", "ve", "edm", "flow"]
SRC = Path(__file__).parents[1] / "src" / "denoisekit"


class Half(DenoiserWrapper):
    def forward(self, y, sigma, cond=None):
        return 0.5 * self.inner(y, sigma, cond)


class Spy(torch.nn.Module):
    """A network that records the (input, time) it is called with and predicts zeros."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, time, cond=None):
        self.seen.append((x, time))
        return torch.zeros_like(x)


# ---------------------------------------------------------------------------------------------
# The protocol and the wrapper base


def test_protocol_declares_the_process():
    from denoisekit.samplers._common import DenoiserFn as from_samplers

    assert from_samplers is DenoiserFn
    assert "process" in DenoiserFn.__annotations__


def test_wrapper_of_a_wrapper_has_the_process():
    net = torch.nn.Linear(2, 2).double()
    den = Denoiser(lambda x, t: net(x), get_process("vp_cosine"), "x0")
    inner = Half(den)
    outer = Half(inner)
    assert outer.process is inner.process is den.process
    guided = ClassifierFreeGuidance(outer, 2.0, 3)
    assert guided.process is den.process and ClassifierGuidance(guided, lambda y, s: y, 1.0).process is den.process
    y = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(outer(y, torch.ones(4)), 0.25 * den(y, torch.ones(4)), rtol=0, atol=0)
    assert outer.inner is inner and isinstance(outer, torch.nn.Module)


def test_wrapper_registers_a_module_inner():
    net = torch.nn.Linear(2, 2)
    wrapped = Half(Half(Denoiser(net, get_process("edm"), "edm")))
    assert list(wrapped.parameters()) == list(net.parameters())  # .to(), .eval(), parameters() reach the network
    assert not wrapped.eval().inner.inner.net.training


def test_wrapper_without_process_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Half needs a denoiser with a process; function has none: wrap the "
                                         r"network as Denoiser\(net, process, prediction\) first"):
        Half(lambda y, sigma, cond=None: y)
    with pytest.raises(TypeError, match="Half wraps a denoiser"):
        Half(get_process("edm"))
    assert Half(lambda y, sigma, cond=None: y, require_process=False).process is None


def test_guidance_wrappers_forward_rather_than_copy():
    """Guidance subclasses the base (its maths needs no process, so it also wraps the bare oracle); no module of
    the package copies a wrapped denoiser's process by hand."""
    den = Denoiser(lambda x, t: x, get_process("edm"))
    for wrapper in (ClassifierFreeGuidance(den, 2.0, 3), ClassifierGuidance(den, lambda y, s: y, 1.0)):
        assert isinstance(wrapper, DenoiserWrapper) and "process" not in vars(wrapper)
    copies = [p.relative_to(SRC) for p in SRC.rglob("*.py") if 'getattr(denoiser, "process"' in p.read_text()]
    assert copies == []


# ---------------------------------------------------------------------------------------------
# The clock: VE frame (y, sigma) <-> the network's (x, time)


def _batch():
    g = torch.Generator().manual_seed(0)
    y = 3 * torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    return y, torch.tensor([0.02, 0.5, 3.0, 40.0], dtype=torch.float64)


@pytest.mark.parametrize("time_input", TIME_INPUTS)
@pytest.mark.parametrize("name", PROCS)
def test_clock_is_what_the_denoiser_feeds_its_net(name, time_input):
    p = get_process(name)
    y, sigma = _batch()
    clock = Clock(p, time_input)
    for kind, rule in PREDICTIONS.items():
        spy = Spy()
        den = Denoiser(spy, p, kind, time_input=time_input)
        den(y, sigma)
        (inp, time), = spy.seen
        assert den.clock == Clock(p, rule.time_input or time_input)
        x, t_net = den.clock.native(y, sigma)
        assert torch.equal(time, t_net), kind
        c = den.coefficients(p.t_from_sigma(sigma))
        assert torch.equal(den.network_time(c), den.clock.network_time(c))
        assert torch.equal(inp, x if rule.net_input is None else rule.net_input(x, c)), kind
        if rule.time_input is None:
            assert torch.equal(x, clock.native(y, sigma)[0]) and torch.equal(time, clock.native(y, sigma)[1])


def test_clock_values():
    """The three time inputs in closed form: diffusers' integer timesteps, t itself, EDM's log(sigma) / 4."""
    ddpm, flow, edm = get_process("ddpm"), get_process("flow"), get_process("edm")
    y = torch.ones(2, 3, dtype=torch.float64)
    x, time = Clock(ddpm).native(y, ddpm.timestep_sigmas(torch.tensor([999, 500])))
    torch.testing.assert_close(time, torch.tensor([999.0, 500.0], dtype=torch.float64), atol=1e-6, rtol=0)
    sigma = torch.tensor([0.5, 4.0], dtype=torch.float64)
    x, time = Clock(flow, "t").native(y, sigma)
    torch.testing.assert_close(time, sigma / (1 + sigma))  # flow: t = sigma_ve / (1 + sigma_ve), alpha = 1 - t
    torch.testing.assert_close(x, y / (1 + sigma[:, None]))
    torch.testing.assert_close(Clock(edm, "log_sigma").native(y, sigma)[1], torch.log(sigma) / 4)
    t = torch.tensor([0.1, 0.7], dtype=torch.float64)
    assert torch.equal(Clock(ddpm).time(t), Clock(ddpm).network_time(Coefficients(ddpm, t)))
    with pytest.raises(ValueError, match="allowed: log_sigma, model, t"):
        Clock(ddpm, "index")


@pytest.mark.parametrize("time_input", TIME_INPUTS)
def test_noisy_classifier_uses_the_clock(time_input):
    p = get_process("vp_cosine")
    clf = NoisyClassifier(torch.nn.Identity(), p, time_input)
    assert clf.clock == Clock(p, time_input) and clf.process is p and clf.time_input == time_input
