"""The multistep sampler family and learned solvers (grid + weights fitted to one model and NFE)."""

import math

import pytest
import torch

from denoisekit import get_process, get_sampler
from denoisekit.process import start_std
from denoisekit.samplers import solve_pf_ode
from denoisekit.samplers.multistep import dpmpp_2m_weights, sample_multistep
from denoisekit.samplers.tuning.grid import optimize_sigmas, tuning_batch
from denoisekit.schedules import get_sigmas_exponential, get_sigmas_karras
from denoisekit.samplers.tuning.solver import LearnedSolver, load_solver, optimize_solver, save_solver

PROCESS = get_process("ddpm")
SMIN, SMAX = PROCESS.sigma_min, PROCESS.sigma_max


def start(n, dim, seed):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * start_std(SMAX, PROCESS)


@pytest.mark.parametrize("end", [0.0, 0.05])
def test_default_weights_are_dpmpp_2m_and_zero_weights_are_ddim(gm2, end):
    grid = get_sigmas_karras(7, end or SMIN, SMAX)
    if end:
        grid = grid[:-1]  # a grid that stops at 0.05 (no final jump)
    y = start(64, 2, 0)
    ours = sample_multistep(gm2, y, grid)
    torch.testing.assert_close(ours, get_sampler("dpmpp_2m")(gm2, y, grid), rtol=0, atol=1e-12)
    zeros = [torch.zeros(i) for i in range(grid.shape[0] - 1)]
    torch.testing.assert_close(sample_multistep(gm2, y, grid, weights=zeros), get_sampler("ddim")(gm2, y, grid),
                               rtol=0, atol=1e-12)
    # any weights are consistent: a denoiser that always answers the same point is followed exactly to it
    point = torch.tensor([0.3, -0.7], dtype=torch.float64)
    rand = [torch.randn(i, dtype=torch.float64) for i in range(grid.shape[0] - 1)]
    out = sample_multistep(lambda x, s, c: point.expand_as(x), y, get_sigmas_exponential(6, SMIN, SMAX),
                           weights=rand[:6])
    torch.testing.assert_close(out, point.expand_as(out), rtol=0, atol=1e-12)


def test_bad_weights_name_the_step(gm2):
    grid = get_sigmas_exponential(4, SMIN, SMAX)
    y = start(4, 2, 0)
    with pytest.raises(ValueError, match="one entry per step \\(4\\), got 3"):
        sample_multistep(gm2, y, grid, weights=[[], [0.1], [0.1, 0.2]])
    with pytest.raises(ValueError, match=r"weights\[2\] must be 2 finite numbers"):
        sample_multistep(gm2, y, grid, weights=[[], [0.1], [0.1], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"weights\[1\] must be 1 finite"):
        sample_multistep(gm2, y, grid, weights=[[], [math.nan], [0, 0], [0, 0, 0]])


@pytest.mark.slow  # learns solver weights (~10 s)
def test_learned_solver_beats_the_optimised_grid_on_held_out_noises(gm2, tmp_path):
    """The tuned weights must pay off on noises the optimiser never saw, against both the best
    standard grid and the optimised grid of the same method (DPM-Solver++(2M)), at 4 NFE."""
    batch = tuning_batch(gm2, sigma_max=SMAX, shape=(2,), n_samples=2048, generator=torch.Generator().manual_seed(5),
                         process=PROCESS)
    grid = optimize_sigmas(gm2, "dpmpp_2m", 4, sigma_min=SMIN, sigma_max=SMAX, batch=batch, n_eval=512, restarts=1)
    solver = optimize_solver(gm2, 4, sigma_min=SMIN, sigma_max=SMAX, batch=batch, init=grid, iters=200,
                             batch_size=512)
    assert solver.meta["learned"] and solver.meta["tuning_loss"] < solver.meta["init_tuning_loss"]
    assert solver.nfe == 4 and bool((solver.sigmas[1:] < solver.sigmas[:-1]).all()) and solver.sigmas[-2] >= SMIN
    y = start(1000, 2, 123)
    ref = solve_pf_ode(gm2, y, SMAX, 0.0, rtol=1e-8, atol=1e-8)

    def err(x):
        return float((x - ref).norm(dim=1).mean())

    learned = err(solver.sample(gm2, y))
    tuned_grid = err(get_sampler("dpmpp_2m")(gm2, y, grid))
    standard = min(err(get_sampler("dpmpp_2m")(gm2, y, g)) for g in (get_sigmas_karras(4, SMIN, SMAX),
                                                                        get_sigmas_exponential(4, SMIN, SMAX)))
    assert learned < 0.8 * tuned_grid < 0.8 * standard, (learned, tuned_grid, standard)
    # saved and loaded, it is the same solver; sample() takes it through the registry too
    save_solver(tmp_path / "s.json", solver, {"model": "gm2"})
    back = load_solver(tmp_path / "s.json")
    assert back.meta["model"] == "gm2"
    torch.testing.assert_close(get_sampler("multistep", weights=back.weights)(gm2, y, back.sigmas), solver.sample(gm2, y))


def test_solver_files_and_arguments_are_checked(tmp_path):
    (tmp_path / "bad.json").write_text('{"format": "denoisekit.sigmas", "sigmas": [1, 0]}')
    with pytest.raises(ValueError, match="not a denoisekit.solver file"):
        load_solver(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: cannot read"):
        load_solver(tmp_path / "broken.json")
    (tmp_path / "short.json").write_text('{"format": "denoisekit.solver", "sigmas": [2, 1, 0], "weights": [[]]}')
    with pytest.raises(ValueError, match="short.json: weights: need one entry per step"):
        load_solver(tmp_path / "short.json")
    with pytest.raises(ValueError, match="nfe must be an integer >= 1"):
        optimize_solver(None, 0, sigma_min=SMIN, sigma_max=SMAX, shape=(2,))
    with pytest.raises(ValueError, match="give the sample shape"):
        optimize_solver(None, 3, sigma_min=SMIN, sigma_max=SMAX)
    with pytest.raises(ValueError, match="init grid must have 4 entries"):
        optimize_solver(None, 3, sigma_min=SMIN, sigma_max=SMAX, batch=(torch.zeros(2, 2), torch.zeros(2, 2)),
                        init=[SMAX, 1.0, 0.0])
    assert LearnedSolver(torch.tensor([2.0, 1.0, 0.0]), dpmpp_2m_weights([2.0, 1.0, 0.0])).nfe == 2
