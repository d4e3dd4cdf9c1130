"""Schedule and solver tuning with a dict condition (the schema's index rule): the tuners used a private copy
that indexed only bare label tensors, so ``optimize_sigmas(..., cond={"labels": ...})`` and every text model
failed with "cond rows 64 != batch 8"."""

import pytest
import torch

from denoisekit import get_process
from denoisekit.samplers.tuning.grid import optimize_sigmas, tuning_batch
from denoisekit.samplers.tuning.solver import optimize_solver

PROCESS = get_process("ddpm")
SMIN, SMAX = PROCESS.sigma_min, PROCESS.sigma_max
N, N_EVAL = 64, 8  # fewer rows per evaluation than tuning noises: the tuners index the condition


class ConditionalOracle:
    """The exact class-conditional mixture denoiser taking ``{"labels": (B,), "text": [B prompts]}``; like a
    network it refuses a condition whose rows are not its batch's, and checks the prompts follow the labels."""

    def __init__(self, gm):
        self.gm = gm

    def __call__(self, y, sigma, cond):
        labels = cond["labels"]
        if labels.shape[0] != y.shape[0] or len(cond["text"]) != y.shape[0]:
            raise ValueError(f"cond rows {labels.shape[0]} != batch {y.shape[0]}")
        assert cond["text"] == [f"class {int(k)}" for k in labels]
        return self.gm.denoise_class(y, sigma, labels)


@pytest.fixture(scope="module")
def setup(gm2):
    labels = torch.arange(N) % gm2.components
    den, cond = ConditionalOracle(gm2), {"labels": labels, "text": [f"class {int(k)}" for k in labels]}
    batch = tuning_batch(den, sigma_max=SMAX, shape=(2,), n_samples=N, process=PROCESS, cond=cond, ref_tol=1e-5,
                         generator=torch.Generator().manual_seed(0))
    return den, cond, batch


def test_optimize_sigmas_with_a_dict_condition(gm2, setup):
    den, cond, batch = setup
    kwargs = dict(sigma_min=SMIN, sigma_max=SMAX, batch=batch, n_eval=N_EVAL, iters=2, restarts=1, min_step=0.2)
    grid = optimize_sigmas(den, "euler", 4, cond=cond, **kwargs)  # init="scan": evaluations on row subsets
    # the same labels as a bare tensor (the form that worked before) give the same grid
    bare = optimize_sigmas(lambda y, s, c: gm2.denoise_class(y, s, c), "euler", 4, cond=cond["labels"], **kwargs)
    assert torch.equal(grid, bare) and grid.numel() == 5 and grid[-1] == 0


def test_optimize_solver_with_a_dict_condition(setup):
    den, cond, batch = setup
    solver = optimize_solver(den, 3, sigma_min=SMIN, sigma_max=SMAX, batch=batch, iters=2, batch_size=N_EVAL,
                             cond=cond, init=torch.tensor([SMAX, 1.0, 0.1, 0.0], dtype=torch.float64))
    assert solver.sigmas.numel() == 4 and torch.isfinite(solver.sigmas).all()


def test_a_condition_with_other_rows_is_a_clear_error(setup):
    den, cond, _ = setup
    with pytest.raises(ValueError, match="cond has 64 rows but the tuning batch has 32 start noises"):
        optimize_sigmas(den, "euler", 4, sigma_min=SMIN, sigma_max=SMAX, shape=(2,), n_samples=32, cond=cond,
                        process=PROCESS)
