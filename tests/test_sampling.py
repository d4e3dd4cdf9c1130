import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit.samplers import SAMPLERS
from denoisekit.samplers.run import nfe_of, sample, steps_for_nfe


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, y, sigma, cond=None):
        self.calls += 1
        return self.inner(y, sigma, cond)


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"ode"}))
@pytest.mark.parametrize("nfe", [5, 10])
def test_nfe_budget_is_honoured_exactly(gm2, name, nfe):
    """``steps_for_nfe`` fits the budget and ``nfe_of`` is the true count of model calls."""
    steps = steps_for_nfe(name, nfe)
    den = Counting(gm2)
    from denoisekit import get_sampler
    from denoisekit.schedules import get_sigmas_karras
    get_sampler(name)(den, gm2.prior_noise(4, 80.0), get_sigmas_karras(steps, 0.002, 80.0),
                      generator=torch.Generator().manual_seed(0))
    assert den.calls == nfe_of(name, steps) <= nfe
    assert nfe_of(name, steps + 1) > nfe  # and it is the most steps that fit


def test_steps_for_nfe():
    assert steps_for_nfe("euler", 7) == 7 and steps_for_nfe("dpmpp_2m", 7) == 7
    assert steps_for_nfe("heun", 10) == 5 and nfe_of("heun", 5) == 9  # last step to 0 is Euler
    assert steps_for_nfe("heun", 9) == 5 and steps_for_nfe("heun", 1) == 1


def test_sample_end_to_end_with_the_adapter(gm2):
    p = get_process("ddpm")
    den = Denoiser(gm2.as_network(p, "eps"), p, "eps")
    x = sample(den, (500, 2), sampler="dpmpp_2m", nfe=20, schedule="karras", dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    true = gm2.sample(4000, torch.Generator().manual_seed(1))
    assert abs(gm2.log_prob(x).mean() - gm2.log_prob(true).mean()) < 0.15


def test_sample_bad_inputs(gm2):
    p = get_process("ddpm")
    den = Denoiser(gm2.as_network(p, "eps"), p, "eps")
    with pytest.raises(ValueError, match="NFE must be an integer >= 1"):
        sample(den, (2, 2), nfe=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(den, (2, 2), sampler="dpm_fast")
    with pytest.raises(ValueError, match="unknown schedule"):
        sample(den, (2, 2), schedule="cosine")
