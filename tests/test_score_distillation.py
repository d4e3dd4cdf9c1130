"""Score distillation (SDS, PDS, VSD), the shapes renderer and the LoRA helper: exact oracles on tiny denoisers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from denoisekit.denoiser import DenoiserWrapper
from denoisekit.models.lora import add_lora, lora_parameters
from denoisekit.models.render2d import ShapesRenderer
from denoisekit.prediction import Denoiser
from denoisekit.process import get_process
from denoisekit.score_distillation import PDS, SDS, VSD, weight


class GaussianOracle(nn.Module):
    """The exact denoiser of N(mean, I) data (VE frame): ``x0 = (y + sigma^2 mean) / (1 + sigma^2)``;
    ``cond`` (labels) shifts the mean, so guidance and prompts change the answer."""

    process = get_process("edm")

    def forward(self, y, sigma, cond=None):
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        mean = torch.zeros_like(y) if cond is None else cond.view(-1, 1, 1, 1).to(y) * torch.ones_like(y)
        return (y + s2 * mean) / (1 + s2)


def test_sds_gradient_is_its_formula():
    """``d loss / d x = w(sigma) (eps_hat - eps)``: by hand from the same draws, by central differences of
    DreamFusion's stop-gradient loss, and as the denoising loss's gradient with the network Jacobian dropped."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    sds = SDS(GaussianOracle(), weighting="snr", cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    sds(x).backward()
    # the same draws, by hand: sigma log-uniform in the range, then eps
    g = torch.Generator().manual_seed(0)
    lo, hi = sds.sigma_range
    u = torch.rand(3, generator=g, dtype=torch.float64)
    sigma = torch.exp(math.log(lo) + u * math.log(hi / lo))
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1)
    y = x.detach() + s * eps
    eps_hat = (y - y / (1 + s**2)) / s  # the oracle's noise prediction
    w = s**2 / (1 + s**2)
    expected = w * (eps_hat - eps)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)

    def central(f, h=1e-4):
        """Central differences of ``f`` in every coordinate of ``x``."""
        out = torch.zeros_like(x)
        for j in range(x.numel()):
            e = torch.zeros(x.numel(), dtype=x.dtype)
            e[j] = h
            e = e.view_as(x)
            out.view(-1)[j] = (f(x.detach() + e) - f(x.detach() - e)) / (2 * h)
        return out

    # DreamFusion's stop-gradient loss 0.5 |x - sg(x - grad)|^2, a quadratic: central differences are exact
    target = x.detach() - expected
    fd = central(lambda z: 0.5 * float(((z - target) ** 2).sum()))
    torch.testing.assert_close(fd, x.grad, rtol=1e-8, atol=1e-9)
    # the weighted denoising loss 0.5 w |eps_hat(z + sigma eps) - eps|^2 has gradient
    # w (eps_hat - eps) d eps_hat / dy; the oracle's Jacobian is sigma / (1 + sigma^2) I, so SDS is its
    # gradient with that factor dropped (Poole et al. 2023, eq. 2 -> 3)
    def denoising_loss(z):
        yz = z + s * eps
        return 0.5 * float((w * ((yz - GaussianOracle()(yz, sigma)) / s - eps) ** 2).sum())

    fd = central(denoising_loss) / (s / (1 + s**2))
    torch.testing.assert_close(fd, x.grad, rtol=1e-6, atol=1e-8)


def test_sds_guidance_and_weighting():
    x = torch.zeros(2, 1, 2, 2, requires_grad=True)
    cond = torch.tensor([1.0, 1.0])
    ups = []
    for scale in (1.0, 4.0):
        sds = SDS(GaussianOracle(), cfg_scale=scale, weighting="sigma", null_label=0,
                  generator=torch.Generator().manual_seed(1))
        sds(x, cond)
        ups.append(sds.last_update)
    # "sigma" weighting: the update is x - x0_hat; the oracle's conditional shift is sigma^2/(1+sigma^2) c,
    # so guidance s changes the update by -(s - 1) sigma^2/(1+sigma^2) with the same draws
    sigma = SDS(GaussianOracle(), generator=torch.Generator().manual_seed(1)).draw(x)[0]
    shift = (sigma**2 / (1 + sigma**2)).view(-1, 1, 1, 1)
    torch.testing.assert_close((ups[1] - ups[0]).float(), -3 * shift.expand_as(x).float(), rtol=1e-4, atol=1e-5)
    assert torch.equal(weight(torch.tensor([2.0]), "uniform"), torch.tensor([1.0]))


def test_pds_same_prompt_is_exactly_zero_and_moves_toward_target():
    src = torch.randn(2, 3, 4, 4)
    zero = torch.zeros(2)
    pds = PDS(GaussianOracle(), src, zero, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    x = src.clone().requires_grad_(True)
    pds(x, zero).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # shared noise: the latents of source and target coincide
    pds(x, torch.full((2,), 2.0))  # a target prompt whose mean is 2: descent raises x
    assert float(pds.last_update.mean()) < 0


def test_vsd_lora_starts_as_identity_and_equals_sds():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x, t, cond=None):
            return self.proj(x)

    torch.manual_seed(0)
    base = Denoiser(Net(), get_process("edm"), "x0")
    particle = add_lora(base, rank=2)
    assert len(lora_parameters(particle)) == 2 and all(p.requires_grad for p in lora_parameters(particle))
    assert not any(p.requires_grad for n, p in particle.named_parameters() if "lora_" not in n)
    b = [p for n, p in particle.named_parameters() if "lora_B" in n][0]
    assert torch.equal(b, torch.zeros_like(b))  # B = 0: the adapted network is the network
    y, sigma = torch.randn(2, 1, 4, 4), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(particle(y, sigma), base(y, sigma))
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    vsd = VSD(base, particle, cfg_scale=1.0, generator=torch.Generator().manual_seed(3))
    sds = SDS(base, cfg_scale=1.0, generator=torch.Generator().manual_seed(3))
    vsd(x), sds(x)
    # SDS subtracts the drawn eps, VSD the particle's prediction of it; both from the same draws
    assert torch.isfinite(vsd.last_update).all() and vsd.last_update.shape == sds.last_update.shape
    loss = vsd.particle_loss(x)
    loss.backward()
    assert all(p.grad is not None for p in lora_parameters(particle))


def test_renderer_gradients_match_finite_differences():
    r = ShapesRenderer(["circle", "square", "star"], size=12, generator=torch.Generator().manual_seed(0)).double()
    img = r()
    assert img.shape == (1, 3, 12, 12) and float(img.detach().min()) >= -1 and float(img.detach().max()) <= 1
    w = torch.randn_like(img)
    (img * w).sum().backward()
    for p in (r.centre, r.size_logit, r.colour):
        assert torch.isfinite(p.grad).all()
        flat = p.data.view(-1)
        for j in range(0, flat.numel(), max(1, flat.numel() // 3)):
            old = float(flat[j])
            flat[j] = old + 1e-5
            up = float((r() * w).sum().detach())
            flat[j] = old - 1e-5
            down = float((r() * w).sum().detach())
            flat[j] = old
            assert abs((up - down) / 2e-5 - float(p.grad.view(-1)[j])) < 1e-4


def test_bad_input_one_line():
    with pytest.raises(ValueError, match="sigma_range"):
        SDS(GaussianOracle(), sigma_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="uniform"):
        SDS(GaussianOracle(), weighting="snr2")
    with pytest.raises(ValueError, match="step_ratio"):
        PDS(GaussianOracle(), torch.zeros(1, 1, 2, 2), None, step_ratio=1.5)
    with pytest.raises(ValueError, match="source"):
        PDS(GaussianOracle(), torch.zeros(1, 1, 2, 2), None)(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="circle"):
        ShapesRenderer(["hexagon"])
    with pytest.raises(ValueError, match="nothing to adapt"):
        add_lora(nn.Conv2d(1, 1, 1))
    assert issubclass(type(SDS(GaussianOracle()).denoiser), DenoiserWrapper)


def test_voxel_scene_is_differentiable_and_opposite_views_agree():
    import math

    from denoisekit.models.render3d import VoxelScene
    from denoisekit.pipelines.score_distill import view_prompt

    scene = VoxelScene(6, 8, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        scene.density.normal_(generator=torch.Generator().manual_seed(1))
        scene.colour.normal_(generator=torch.Generator().manual_seed(2))
    az = torch.tensor([0.0, math.pi, 0.5 * math.pi, 1.5 * math.pi])
    img, sil = scene.render(az, torch.zeros(4))
    assert img.shape == (4, 3, 8, 8) and float(img.detach().min()) >= -1 and float(img.detach().max()) <= 1
    # the silhouette depends on the sum of densities along a ray only: opposite views mirror for any volume
    torch.testing.assert_close(sil[1], sil[0].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(sil[3], sil[2].flip(-1), atol=1e-6, rtol=0)
    assert float((img[1] - img[0].flip(-1)).detach().abs().max()) > 1e-2  # the colours see different sides ...
    with torch.no_grad():  # ... unless the volume is mirror-symmetric along the view axis (z: dim 1)
        scene.density.copy_((scene.density + scene.density.flip(1)) / 2)
        scene.colour.copy_((scene.colour + scene.colour.flip(1)) / 2)
    img = scene(az[:2])
    torch.testing.assert_close(img[1], img[0].flip(-1), atol=1e-6, rtol=0)
    # gradients of every parameter match central differences
    w = torch.randn_like(img)
    (img * w).sum().backward()
    for p in (scene.density, scene.colour):
        flat = p.data.view(-1)
        for j in range(0, flat.numel(), flat.numel() // 5):
            old = float(flat[j])
            flat[j] = old + 1e-6
            up = float((scene(az[:2]) * w).sum().detach())
            flat[j] = old - 1e-6
            down = float((scene(az[:2]) * w).sum().detach())
            flat[j] = old
            assert abs((up - down) / 2e-6 - float(p.grad.view(-1)[j])) < 1e-5
    assert [view_prompt("a cat", math.radians(a)) for a in (10, 90, 180, 300)] == \
        ["a cat, front view", "a cat, side view", "a cat, back view", "a cat, side view"]


class LabelOracle(nn.Module):
    """The exact denoiser of N(MEANS[label], I) data; label 2 is the null (mean 0), as a class run's dropout."""

    process = get_process("edm")
    means = torch.tensor([0.5, -0.5, 0.0])

    def forward(self, y, sigma, cond=None):
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        mean = self.means[cond].view(-1, 1, 1, 1) if cond is not None else torch.zeros(len(y), 1, 1, 1)
        return (y + s2 * mean) / (1 + s2)


def test_pipeline_sds_seeks_the_guided_mode_and_pds_keeps_the_source():
    """On Gaussian classes the loops have closed-form fixed points. SDS: the guided mean ``s m_a`` (mode seeking,
    saturated by the guidance scale). PDS from a source of class b: its update is
    ``sigma^2/(1+sigma^2) ((x - src) - s (m_a - m_b))`` with the noise cancelled exactly, so the edit is the
    source shifted by ``s (m_a - m_b)``, every detail of the source kept."""
    from types import SimpleNamespace

    from denoisekit.generation import LoadedModel
    from denoisekit.pipelines.score_distill import distill_image

    model = LoadedModel(LabelOracle(), (1, 4, 4), condition=SimpleNamespace(kind="class"), classes=("a", "b"),
                        num_classes=2)
    x = distill_image(model, "a", method="sds", n=2, steps=400, lr=0.02, cfg_scale=1.5, weighting="sigma",
                      sigma_range=(0.5, 2.0))
    assert abs(float(x.mean()) - 0.75) < 0.1 and float(x.std()) < 0.2
    src = 0.3 * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) - 0.5
    x = distill_image(model, "a", method="pds", source=src, source_prompt="b", n=2, steps=400, lr=0.01,
                      cfg_scale=1.0, weighting="sigma", sigma_range=(0.5, 2.0))
    torch.testing.assert_close(x, (src + 1.0 * (0.5 - -0.5)).clamp(-1, 1), atol=0.02, rtol=0)  # images clamp
