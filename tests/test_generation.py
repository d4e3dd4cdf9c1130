"""generate() (denoisekit.generation) on exact Gaussian-mixture oracles: it is sample() with per-sample seeds,
batch-size independent; guidance is the guidance wrappers'; grids come from a name, a file or a learned
solver; x_init + sigma_start start from a given point on the truncated grid (SDEdit's seam)."""

import pytest
import torch

from denoisekit import GaussianMixture, get_process
from denoisekit._utils import randn, seeded_generators
from denoisekit.generation import Guidance, LoadedModel, SampleDefaults, generate, guided_denoiser, truncate_sigmas
from denoisekit.guidance import ClassifierFreeGuidance
from denoisekit.samplers.multistep import dpmpp_2m_weights
from denoisekit.samplers.run import DEFAULT_SCHEDULE, sample, steps_for_nfe
from denoisekit.samplers.tuning.grid import save_sigmas
from denoisekit.samplers.tuning.solver import LearnedSolver
from denoisekit.schedules import get_sigmas

K = 4


class ClassOracle:
    """The exact class-conditional denoiser of a mixture whose components are the classes (label K: null)."""

    def __init__(self, gm: GaussianMixture, process):
        self.gm, self.process = gm, process

    def __call__(self, y, sigma, cond=None):
        return self.gm.denoise_class(y, sigma, cond)


class Kind:
    kind, keys, guidable = "class", ("labels",), True


@pytest.fixture(scope="module")
def model():
    den = ClassOracle(GaussianMixture.random(dim=2, components=K, seed=5), get_process("edm"))
    return LoadedModel(den, (2,), condition=Kind(), num_classes=K, defaults=SampleDefaults(nfe=6, cfg_scale=2.0))


def test_generate_is_sample_with_per_sample_seeds_and_any_batch(model):
    labels = torch.arange(10) % K
    x = generate(model, 10, labels, sampler="dpmpp_2m", nfe=6, guidance=Guidance(), seed=3, dtype=torch.float64)
    ref = sample(model.denoiser, (10, 2), sampler="dpmpp_2m", nfe=6, schedule=DEFAULT_SCHEDULE, cond=labels,
                 generator=seeded_generators(3, 10), dtype=torch.float64)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    # stochastic too: sample i draws from seed + i whatever the batch around it
    a = generate(model, 7, labels[:7], sampler="euler_ancestral", batch_size=7, seed=1, dtype=torch.float64)
    b = generate(model, 7, labels[:7], sampler="euler_ancestral", batch_size=3, seed=1, dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_defaults_and_guidance_are_the_runs(model):
    labels = torch.arange(K)
    x = generate(model, K, labels, seed=0, dtype=torch.float64)  # the run's nfe 6 and cfg 2
    cfg = ClassifierFreeGuidance(model.denoiser, 2.0, null_label=K)
    ref = sample(cfg, (K, 2), nfe=6, schedule=DEFAULT_SCHEDULE, cond=labels, generator=seeded_generators(0, K),
                 dtype=torch.float64)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    den = guided_denoiser(model, Guidance(cfg_scale=3.0, rescale=0.5, interval=(0.1, 5.0)))
    assert isinstance(den, ClassifierFreeGuidance) and (den.scale, den.rescale, den.interval) == (3.0, 0.5, (0.1, 5.0))
    assert guided_denoiser(model, Guidance()) is model.denoiser


def test_x_init_at_sigma_max_is_plain_sampling(model):
    """Starting from the prior noise at the grid's first level is plain sampling given the same noise."""
    grid = get_sigmas(model.process, DEFAULT_SCHEDULE, steps_for_nfe("heun", 9))
    y = randn((8, 2), seeded_generators(11, 8), dtype=torch.float64) * float(model.process.prior_std(grid[0]))
    labels = torch.arange(8) % K
    plain = generate(model, 8, labels, sampler="heun", nfe=9, seed=11, dtype=torch.float64)
    started = generate(model, 8, labels, sampler="heun", nfe=9, x_init=y, sigma_start=float(grid[0]),
                       dtype=torch.float64)
    torch.testing.assert_close(started, plain, rtol=0, atol=0)


def test_truncated_grid_starts_at_sigma_start(model):
    grid = get_sigmas(model.process, "karras", 10)
    cut = truncate_sigmas(grid, 1.5)
    assert cut[0] == 1.5 and torch.equal(cut[1:], grid[grid < 1.5]) and cut[-1] == 0
    assert torch.equal(truncate_sigmas(grid, float(grid[0])), grid)
    seen = []
    x0 = torch.tensor([[0.5, -0.5]] * 3, dtype=torch.float64)
    y = x0 + 1.5 * randn((3, 2), seeded_generators(0, 3), dtype=torch.float64)  # SDEdit: the image, noised
    out = generate(model, 3, torch.zeros(3, dtype=torch.long), sampler="euler", schedule="karras", nfe=10,
                   x_init=y, sigma_start=1.5, guidance=Guidance(), dtype=torch.float64,
                   callback=lambda info: seen.append(info["sigma"]))
    assert seen[0] == 1.5 and seen == cut[:-1].tolist() and out.shape == (3, 2)
    with pytest.raises(ValueError, match="sigma_start must be in"):
        truncate_sigmas(grid, 2 * float(grid[0]))
    with pytest.raises(ValueError, match="sigma_start needs x_init"):
        generate(model, 3, sigma_start=1.0)


def test_grids_from_a_file_and_a_learned_solver(model, tmp_path):
    grid = get_sigmas(model.process, "exponential", 5)
    save_sigmas(tmp_path / "grid.json", grid, {"sampler": "dpmpp_2m"})
    labels = torch.arange(6) % K
    a = generate(model, 6, labels, sampler="dpmpp_2m", schedule=f"file:{tmp_path / 'grid.json'}", dtype=torch.float64)
    b = generate(model, 6, labels, sampler="dpmpp_2m", sigmas=grid, dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    solver = LearnedSolver(grid, dpmpp_2m_weights(grid))  # DPM-Solver++(2M)'s weights: the same solver
    torch.testing.assert_close(generate(model, 6, labels, solver=solver, dtype=torch.float64), b, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="does not exist"):
        generate(model, 2, labels[:2], schedule=f"file:{tmp_path / 'missing.json'}")
    with pytest.raises(ValueError, match=r"or file:PATH"):
        generate(model, 2, labels[:2], schedule="cosine")
    with pytest.raises(ValueError, match="solver sets the sampler"):
        generate(model, 2, labels[:2], solver=solver, sampler="euler")
    with pytest.raises(ValueError, match="cannot start at another sigma_start"):
        generate(model, 2, labels[:2], solver=solver, x_init=torch.zeros(2, 2), sigma_start=1.0)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        generate(model, 0)
    with pytest.raises(ValueError, match="has 3 entries for a batch of 4"):
        generate(model, 4, torch.arange(3))
    with pytest.raises(ValueError, match="got 2 generators for 4 samples"):
        generate(model, 4, torch.arange(4), generators=seeded_generators(0, 2))
    with pytest.raises(ValueError, match=r"x_init has shape \(2, 2\), expected \(4, 2\)"):
        generate(model, 4, torch.arange(4), x_init=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="needs a denoiser with a process"):
        LoadedModel(lambda y, s, c=None: y, (2,))


def test_generate_images_from_user_labels(model):
    from denoisekit.pipelines import generate_images

    out = generate_images(model, 10, labels="all", nfe=4)  # exactly n: image i has class i mod K
    assert out.per_row == 3 and out.labels.tolist() == [0, 1, 2, 3] * 2 + [0, 1] and out.images.shape == (10, 2)
    grid = out.grid()  # one row per class; the rows of classes 2 and 3 end in a blank cell
    assert grid.shape == (12, 2) and grid[:6].equal(out.images[[0, 4, 8, 1, 5, 9]]) and (grid[[8, 11]] == 1).all()
    ref = generate(model, 10, out.labels, nfe=4)  # the run's cfg (2) and seeds
    torch.testing.assert_close(out.images, ref, rtol=0, atol=0)
    assert (generate_images(model, 5, labels=3, nfe=2).labels == 3).all()
    with pytest.raises(ValueError, match="label 7 is out of range: this model has classes 0..3"):
        generate_images(model, 5, labels=7)
    with pytest.raises(ValueError, match="prompts given, but this model is not text-conditional"):
        generate_images(model, 5, prompts=["a cat"])
    with pytest.raises(ValueError, match="a negative prompt needs a text-conditional model"):
        generate_images(model, 5, negative_prompt="blurry")
