"""Inverse problems and editing against exact oracles: the operators' adjoint / pseudo-inverse / prox identities,
the exact Gaussian-mixture posterior, DPS / DiffPIR / DAPS moving toward it, RePaint keeping the known pixels
and SDEdit's two ends."""

import math

import pytest
import torch
from torch import nn

from denoisekit import GaussianMixture
from denoisekit.data.degrade import downsample
from denoisekit.data.operators import (Blur, Inpaint, Matrix, SuperResolution, box_mask, gaussian_kernel,
                                       motion_kernel, random_mask, task_operator)
from denoisekit.eval.toy2d import sliced_wasserstein
from denoisekit.generation import Guidance, LoadedModel, generate
from denoisekit.pipelines.inverse import data_residual, restore
from denoisekit.pipelines.posterior import DPS, DiffPIR, daps
from denoisekit.pipelines.repaint import extend_canvas, repaint, repaint_nfe, repaint_schedule
from denoisekit.pipelines.sdedit import sdedit, start_sigma
from denoisekit.process import get_process
from denoisekit.samplers import sample_ddim
from denoisekit.schedules import get_sigmas_karras

G = torch.Generator


def _operators():
    mask = random_mask((8, 8), 0.5, n=2, generator=G().manual_seed(0))
    return [Inpaint(mask), SuperResolution(2), SuperResolution(4), Blur(gaussian_kernel(1.0)),
            Blur(motion_kernel(5, 30.0))]


@pytest.mark.parametrize("op", _operators(), ids=lambda o: o.name)
def test_adjoint_pinv_and_prox_identities(op):
    g = G().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    y = op(torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64))
    assert torch.allclose((op(x) * y).sum(), (x * op.adjoint(y)).sum(), rtol=1e-10)  # <Ax, y> = <x, A^T y>
    pinv = op.pinv(y)
    assert torch.allclose(op.pinv(op(pinv)), pinv, atol=1e-9)  # A+ A A+ = A+
    tol = getattr(op, "eps", 0.0) * x.norm() + 1e-9  # truncated SVD: A A+ A = A up to the dropped frequencies
    assert (op(op.pinv(op(x))) - op(x)).norm() <= tol
    x0, rho = torch.randn_like(x), torch.tensor([0.3, 2.0], dtype=torch.float64)
    sol = op.prox(x0, y, rho)  # the normal equations A^T (A x - y) + rho (x - x0) = 0
    assert torch.allclose(op.adjoint(op(sol) - y) + rho.view(-1, 1, 1, 1) * (sol - x0), torch.zeros_like(x), atol=1e-9)


def test_shared_with_palette_and_masks():
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(SuperResolution(4)(x), downsample(x, 4))
    low = downsample(x, 2)
    assert torch.equal(SuperResolution(2).pinv(low), low.repeat_interleave(2, 2).repeat_interleave(2, 3))
    m = random_mask((10, 10), 0.7, n=3, generator=G().manual_seed(0))
    assert m.flatten(1).sum(1).tolist() == [70.0] * 3
    assert box_mask((8, 8), 0.25).sum() == 16
    cg = Matrix(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]]))  # the base class's conjugate-gradient prox
    x0, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    sol = cg.prox(x0, y, 0.5)
    assert torch.allclose(cg.adjoint(cg(sol) - y) + 0.5 * (sol - x0), torch.zeros_like(x0), atol=1e-9)
    with pytest.raises(ValueError, match="divisible by 4"):
        task_operator("sr4", (6, 6))
    with pytest.raises(ValueError, match="allowed"):
        task_operator("jpeg", (8, 8))


def test_exact_posterior_is_prior_times_likelihood(gm2):
    m, sy = torch.tensor([[1.0, 0.5]], dtype=torch.float64), 0.2
    y = torch.tensor([0.3], dtype=torch.float64)
    post = gm2.posterior(m, y, sy)
    pts = torch.randn(5, 2, generator=G().manual_seed(0), dtype=torch.float64)
    unnorm = gm2.log_prob(pts) - 0.5 * ((y - pts @ m.T) ** 2).sum(1) / sy**2
    assert torch.allclose(post.log_prob(pts) - post.log_prob(pts[:1]), unnorm - unnorm[0], atol=1e-8)


@pytest.fixture(scope="module")
def problem(gm2):
    """One 1-D measurement of a 2-D mixture sample and 3000 exact posterior samples."""
    m, sy = torch.tensor([[1.0, 0.5]], dtype=torch.float64), 0.1
    g = G().manual_seed(1)
    y = Matrix(m).measure(gm2.sample(1, g), sy, g)
    ref = gm2.posterior(m, y[0], sy).sample(3000, G().manual_seed(2))
    prior = gm2.sample(1000, G().manual_seed(3))
    return Matrix(m), y.expand(1000, 1), sy, ref, sliced_wasserstein(prior, ref)


def _start(n=1000):
    return torch.randn(n, 2, generator=G().manual_seed(4), dtype=torch.float64) * 80.0


SIGMAS = get_sigmas_karras(20, 0.002, 80.0).double()


@pytest.mark.parametrize("name,bound", [("dps", 0.6), ("diffpir", 0.3), ("daps", 0.3), ("exact", 0.1)])
def test_posterior_samplers_move_to_the_exact_posterior(gm2, problem, name, bound):
    op, meas, sy, ref, prior_sw = problem
    g = G().manual_seed(5)
    if name == "daps":
        x = daps(gm2, op, meas, (1000, 2), sigma_y=sy, annealing_steps=20, ode_steps=1, generator=g,
                 dtype=torch.float64)
    else:  # the exact posterior's own denoiser checks the yardstick: what a perfect solver reaches at 20 steps
        den = {"dps": DPS(gm2, op, meas, 1.0), "diffpir": DiffPIR(gm2, op, meas, sy),
               "exact": gm2.posterior(op.matrix, meas[0], sy)}[name]
        x = sample_ddim(den, _start(), SIGMAS, eta=1.0, generator=g)
    assert sliced_wasserstein(x, ref) < bound * prior_sw
    assert (x.mean(0) - ref.mean(0)).norm() < bound * 2


def test_repaint_schedule_and_known_pixels(gm2):
    assert repaint_schedule(4, 2, 2) == [0, 1, 2, 3, 4, 3, 2, 3, 4]
    assert repaint_schedule(5, 2, 1) == list(range(6))  # no resampling: plain descent
    assert repaint_nfe(4, 2, 2) == 6
    known = gm2.sample(1, G().manual_seed(0)).float().view(1, 1, 1, 2).expand(1000, 1, 1, 2)
    mask = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    x = repaint(gm2, known, mask, get_sigmas_karras(20, 0.002, 80.0), jump_length=3, jump_n_sample=2,
                generator=G().manual_seed(1))
    assert torch.equal(x[..., 0], known[..., 0])  # the known pixel exactly
    # the hole moves toward p(x2 | x1) (the exact posterior of a noiseless measurement of x1, up to sigma_y = 1e-3);
    # RePaint is approximate (the known part is re-noised independently at each level): about 0.56 here
    ref = gm2.posterior(torch.tensor([[1.0, 0.0]]), known[0, 0, 0, :1].double(), 1e-3).sample(3000, G().manual_seed(2))
    prior = gm2.sample(1000, G().manual_seed(3))
    assert sliced_wasserstein(x.view(-1, 2).double(), ref) < 0.65 * sliced_wasserstein(prior, ref)
    canvas, hole = extend_canvas(torch.ones(1, 1, 2, 2), (4, 4))
    assert hole.sum() == 12 and canvas[0, 0, 1:3, 1:3].eq(1).all()
    with pytest.raises(ValueError, match="missing and known"):
        repaint(gm2, known, torch.zeros(1, 1, 1, 2), get_sigmas_karras(4, 0.002, 80.0))


class _WithProcess(nn.Module):
    """The exact mixture as a run's denoiser (a LoadedModel needs a process)."""

    def __init__(self, gm):
        super().__init__()
        self.gm, self.process = gm, get_process("edm")

    def forward(self, y, sigma, cond=None):
        return self.gm(y, sigma)


@pytest.fixture(scope="module")
def image_model():
    """4x4 "images" of a 16-D mixture whose samples lie (nearly all) in [-1, 1]."""
    return LoadedModel(_WithProcess(GaussianMixture.random(dim=16, components=6, seed=1, spread=0.4, scale=0.1)),
                       (1, 4, 4))


def test_sdedit_ends_and_strength(image_model):
    x = torch.randn(3, 1, 4, 4).clamp(-1, 1)
    assert torch.equal(sdedit(image_model, x, 0.0, nfe=6), x)
    assert torch.equal(sdedit(image_model, x, 1.0, nfe=6, seed=3), generate(image_model, 3, nfe=6, seed=3))
    grid = get_sigmas_karras(10, 0.002, 80.0)
    levels = [start_sigma(grid, s) for s in (0.05, 0.3, 0.6, 0.9, 1.0)]
    assert levels == sorted(levels) and math.isclose(levels[-1], 80.0)
    dist = [(sdedit(image_model, x, s, nfe=6) - x).norm().item() for s in (0.2, 0.6, 1.0)]
    assert dist[0] < dist[1] < dist[2]
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        sdedit(image_model, x, 1.5)


@pytest.mark.parametrize("method", ["pinv", "repaint", "dps", "diffpir", "daps"])
def test_restore_every_method(image_model, method):
    g = G().manual_seed(0)
    truth = image_model.denoiser.gm.sample(4, g).float().view(4, 1, 4, 4)
    op = Inpaint(box_mask((4, 4), 0.25))
    meas = op.measure(truth, 0.05, g)
    opts = {"zeta": 1.0} if method == "dps" else None  # the default step is the digits'; this prior is narrower
    out = restore(image_model, op, meas, method, sigma_y=0.05, nfe=8, guidance=Guidance(), options=opts)
    assert out.images.shape == truth.shape and out.nfe <= 8 and torch.isfinite(out.images).all()
    if method != "pinv":  # an image that explains the data: residual near sigma_y, not the prior's
        assert data_residual(op, out.images, meas).mean() < 0.3
    with pytest.raises(ValueError, match="repaint inpaints"):
        restore(image_model, SuperResolution(2), downsample(truth, 2), "repaint", sigma_y=0.0)


class _Halve(nn.Module):
    """A stand-in autoencoder: latents are the 2x2 block means, decoding repeats them."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def encode_latents(self, x):
        return torch.nn.functional.avg_pool2d(x, 2)

    def decode_latents(self, z):
        return z.repeat_interleave(2, 2).repeat_interleave(2, 3)


def test_sdedit_of_a_latent_run_edits_the_latent(image_model):
    latent = LoadedModel(image_model.denoiser, (1, 4, 4), decoder=_Halve())
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    out = sdedit(latent, x, 0.3, nfe=6)
    assert out.shape == x.shape
    blocks = out.unfold(2, 2, 2).unfold(3, 2, 2)  # decoded: constant on 2x2 blocks
    assert torch.allclose(blocks, blocks[..., :1, :1].expand_as(blocks))
    with pytest.raises(ValueError, match="autoencoder encodes"):
        sdedit(latent, torch.zeros(2, 1, 6, 6), 0.3, nfe=6)
