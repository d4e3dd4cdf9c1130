"""Optimised step grids: they must beat the fixed grids at the same NFE on held-out noises (oracle)."""

import json

import pytest
import torch

from denoisekit import get_process, get_sampler
from denoisekit.process import start_std
from denoisekit.samplers import solve_pf_ode
from denoisekit.samplers.run import nfe_of, steps_for_nfe
from denoisekit.samplers.tuning.grid import load_sigmas, load_sigmas_meta, optimize_sigmas, save_sigmas, tuning_batch
from denoisekit.schedules import get_sigmas_exponential, get_sigmas_karras, get_sigmas_uniform_t

PROCESS = get_process("ddpm")
SMIN, SMAX = PROCESS.sigma_min, PROCESS.sigma_max


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These runs are thousands of tiny (256, 2) ops: threads only add overhead, and contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def held_out(gm2):
    """Fresh start noises (not the optimiser's) and their exact ODE solutions."""
    y = torch.randn(1000, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    y = y * start_std(SMAX, PROCESS)
    return y, solve_pf_ode(gm2, y, SMAX, 0.0, rtol=1e-8, atol=1e-8)


def _err(gm, sampler, sigmas, y, ref, objective="l2"):
    sq = ((get_sampler(sampler)(gm, y, sigmas) - ref) ** 2).sum(1)
    return float(sq.mean() if objective == "mse" else sq.sqrt().mean())


def _fixed(steps):
    return {"karras": get_sigmas_karras(steps, SMIN, SMAX), "exponential": get_sigmas_exponential(steps, SMIN, SMAX),
            "trailing": get_sigmas_uniform_t(PROCESS, steps, "trailing")}


@pytest.mark.slow  # optimises a grid (seconds)
@pytest.mark.parametrize("sampler,nfe,objective", [("euler", 5, "l2"), ("euler", 10, "mse"), ("dpmpp_2m", 5, "l2"),
                                                   ("dpmpp_2m", 10, "l2"), ("heun", 10, "mse")])
def test_optimised_grid_beats_fixed_grids_on_held_out_noise(gm2, held_out, sampler, nfe, objective):
    losses = []
    sigmas = optimize_sigmas(gm2, sampler, nfe, sigma_min=SMIN, sigma_max=SMAX, shape=(2,), n_samples=256,
                             iters=20, restarts=2, generator=torch.Generator().manual_seed(0), process=PROCESS,
                             objective=objective, callback=lambda info: losses.append(info["loss"]))
    steps = steps_for_nfe(sampler, nfe)
    assert sigmas.dtype == torch.float64 and sigmas.numel() == steps + 1 and sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all() and sigmas[0] == pytest.approx(SMAX) and sigmas[-2] >= SMIN
    assert nfe_of(sampler, steps) <= nfe
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # the search only accepts improvements

    y, ref = held_out
    errs = {name: _err(gm2, sampler, g, y, ref, objective) for name, g in _fixed(steps).items()}
    opt = _err(gm2, sampler, sigmas, y, ref, objective)
    best = min(errs, key=errs.get)
    print(f"{sampler} NFE {nfe} ({objective}): optimised {opt:.4g} vs "
          + ", ".join(f"{k} {v:.4g}" for k, v in errs.items())
          + f" ({100 * (1 - opt / errs[best]):.0f}% below {best})")
    assert opt < 0.8 * errs[best]


@pytest.mark.slow  # optimises a grid (seconds)
def test_stratified_estimate_on_a_shared_batch(gm2, held_out):
    """More tuning noises than rows per evaluation (``n_eval``): the stratified estimate, on a batch
    built once by ``tuning_batch``, still gives a grid far better than the fixed ones on held-out noise,
    and the same grid as building the batch inside the call from the same generator."""
    kwargs = dict(sigma_min=SMIN, sigma_max=SMAX, n_eval=256, iters=10, restarts=2)
    batch = tuning_batch(gm2, sigma_max=SMAX, shape=(2,), n_samples=1024, process=PROCESS,
                         generator=torch.Generator().manual_seed(1))
    assert batch[0].shape == batch[1].shape == (1024, 2)
    sigmas = optimize_sigmas(gm2, "dpmpp_2m", 6, batch=batch, **kwargs)
    inline = optimize_sigmas(gm2, "dpmpp_2m", 6, shape=(2,), n_samples=1024, process=PROCESS,
                             generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(sigmas, inline)
    y, ref = held_out
    errs = {name: _err(gm2, "dpmpp_2m", g, y, ref) for name, g in _fixed(6).items()}
    assert _err(gm2, "dpmpp_2m", sigmas, y, ref) < 0.8 * min(errs.values())


def test_fixed_sigma_min_and_explicit_init(gm2):
    init = get_sigmas_exponential(4, SMIN, SMAX)
    sigmas = optimize_sigmas(gm2, "euler", 4, sigma_min=SMIN, sigma_max=SMAX, shape=(2,), n_samples=64, iters=5,
                             generator=torch.Generator().manual_seed(0), init=init, tune_sigma_min=False)
    assert sigmas[0] == pytest.approx(SMAX) and sigmas[-2] == pytest.approx(SMIN) and not torch.equal(sigmas, init)
    # Nothing to move: two steps with both ends fixed, or a single step.
    two = optimize_sigmas(gm2, "euler", 2, sigma_min=SMIN, sigma_max=SMAX, shape=(2,), tune_sigma_min=False)
    torch.testing.assert_close(two, torch.tensor([SMAX, SMIN, 0.0], dtype=torch.float64))
    one = optimize_sigmas(gm2, "heun", 2, sigma_min=SMIN, sigma_max=SMAX, shape=(2,))
    torch.testing.assert_close(one, torch.tensor([SMAX, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [
    dict(sampler="euler_ancestral"),  # stochastic: no fixed endpoint to match
    dict(sampler="ode"),  # adaptive: chooses its own steps
    dict(sampler="nope"),
    dict(nfe=0),
    dict(sigma_min=0.0),
    dict(sigma_min=SMAX),
    dict(init="cosine"),
    dict(init=torch.tensor([SMAX, 1.0, 0.0], dtype=torch.float64)),  # wrong number of steps for nfe=4
    dict(n_samples=0),
    dict(n_eval=1),
    dict(restarts=0),
    dict(objective="l1"),
    dict(shape=None),  # neither a shape nor a tuning batch
    dict(batch=(torch.zeros(8, 2, dtype=torch.float64), torch.zeros(8, 3, dtype=torch.float64))),
])
def test_optimize_sigmas_bad_args(gm2, kwargs):
    args = dict(sampler="euler", nfe=4, sigma_min=SMIN, sigma_max=SMAX, shape=(2,), iters=1, n_samples=8)
    args.update(kwargs)
    with pytest.raises(ValueError):
        optimize_sigmas(gm2, **args)


def test_save_load_round_trip(tmp_path):
    sigmas = get_sigmas_karras(6, 0.002, 80.0)
    path = tmp_path / "grid.json"
    save_sigmas(path, sigmas, {"sampler": "euler", "nfe": 6})
    assert torch.equal(load_sigmas(path), sigmas)  # exact: JSON floats round-trip
    assert load_sigmas_meta(path) == {"sampler": "euler", "nfe": 6}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sigmas": [1.0, 0.0]}))
    with pytest.raises(ValueError):
        load_sigmas(bad)
    with pytest.raises(ValueError):
        save_sigmas(tmp_path / "x.json", [0.0, 1.0])
