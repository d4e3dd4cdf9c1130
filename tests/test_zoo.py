import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from denoisekit.models.gan import DCGAN, DCGANConfig, discriminator_loss, generator_loss
from denoisekit.models.vae import VAE, VAEConfig, elbo, gaussian_kl, gaussian_log_likelihood
from denoisekit.train.zoo import ZooConfig, load_zoo, sample, samples_per_second
from denoisekit.train.recipes.zoo import train_zoo


class LinearGaussian(nn.Module):
    """``z ~ N(0, I_d)``, ``x | z ~ N(W z, s^2 I_D)`` with orthogonal columns ``W = Q diag(a)``: the exact
    posterior is diagonal, ``N(Sigma W^T x / s^2, Sigma)`` with ``Sigma = diag(1 / (1 + a^2 / s^2))``, and
    ``log p(x) = log N(x; 0, W W^T + s^2 I)``. ``shift`` moves the encoder's mean off the posterior."""

    def __init__(self, D=5, d=3, s=0.7, shift=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=torch.float64))
        self.a = torch.tensor([2.0, 0.5, 1.3], dtype=torch.float64)[:d]
        self.W, self.s, self.shift = q * self.a, s, shift
        self.post_var = 1 / (1 + self.a ** 2 / s ** 2)

    def encode(self, x):
        mean = self.post_var * (x @ self.W) / self.s ** 2
        return mean + self.shift, self.post_var.log().expand_as(mean)

    def decode(self, z):
        return z @ self.W.T

    def output_log_std(self):
        return torch.tensor(math.log(self.s), dtype=torch.float64)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        zero = torch.zeros(self.W.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(zero, cov).log_prob(x)


def test_gaussian_kl_and_likelihood_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    q, p = Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(gaussian_kl(mean, logvar), kl_divergence(q, p).sum(1))
    x = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    mu, log_std = torch.randn(4, 2, 3, generator=g, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64)
    expected = Normal(mu, log_std.exp()).log_prob(x).sum((1, 2))
    torch.testing.assert_close(gaussian_log_likelihood(x, mu, log_std), expected)


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_elbo_expectation_is_log_evidence_minus_posterior_kl(shift):
    """E_q[ELBO] = log p(x) - KL(q || p(z | x)); exact posterior (shift 0): the bound is tight. Monte Carlo
    over 30000 reparameterised draws per point, compared within 4 standard errors."""
    model = LinearGaussian(shift=shift)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reps = 30000
    terms = elbo(model, x.repeat(reps, 1), torch.Generator().manual_seed(4))
    est = terms.elbo.view(reps, 3).mean(0)
    se = terms.elbo.view(reps, 3).std(0) / math.sqrt(reps)
    gap = 0.5 * (shift ** 2 / model.post_var).sum()  # KL between Gaussians of equal variance
    assert (est - (model.log_px(x) - gap)).abs().max() < 4 * se.max()
    assert 0.5 * (0.4 ** 2 / model.post_var).sum() > 10 * se.max()  # 4 SE can tell the shift's gap from zero
    torch.testing.assert_close(terms.elbo, terms.log_likelihood - terms.kl)


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_shapes_and_batch_independent_sampling(size):
    vae = VAE(VAEConfig(image_size=size, channels=3, latent_dim=4, width=8)).double()
    x = torch.rand(2, 3, size, size, dtype=torch.float64) * 2 - 1
    terms = vae(x, torch.Generator().manual_seed(0))
    assert terms.elbo.shape == (2,) and torch.isfinite(terms.elbo).all()
    torch.testing.assert_close(terms.elbo, terms.log_likelihood - terms.kl)
    gan = DCGAN(DCGANConfig(image_size=size, channels=3, latent_dim=4, width=8)).double().eval()
    assert gan.discriminator(x).shape == (2,)
    for model in (vae, gan):
        out = sample(model, 3, seed=5, batch_size=2)
        assert out.shape == (3, 3, size, size) and out.abs().max() <= 1
        torch.testing.assert_close(sample(model, 1, seed=7), out[2:])  # sample i does not depend on the batch


def test_dcgan_matches_the_paper_layout_at_64():
    gan = DCGAN(DCGANConfig(image_size=64, channels=3, latent_dim=100, width=64))
    convs = [m for m in gan.generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    convs = [m for m in gan.discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    w = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(w.std()) - 0.02) < 0.002


def test_gan_losses():
    logits = torch.tensor([-100.0, -2.0, 0.0, 3.0, 100.0], dtype=torch.float64)
    ones, zeros = torch.ones_like(logits), torch.zeros_like(logits)
    bce = lambda target: F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    torch.testing.assert_close(discriminator_loss(logits, logits), bce(ones) + bce(zeros))
    torch.testing.assert_close(generator_loss(logits), -torch.sigmoid(logits).log())
    assert torch.isfinite(discriminator_loss(logits, logits)).all()


def test_config_errors():
    with pytest.raises(ValueError, match="allowed: dcgan, vae"):
        ZooConfig(model="flow")
    with pytest.raises(ValueError, match="image_size must be 8, 16, 32 or 64"):
        VAEConfig(image_size=28)
    with pytest.raises(ValueError, match="bad model_options"):
        train_zoo(ZooConfig(model="vae", steps=1, model_options={"depth": 3}), torch.zeros(4, 1, 8, 8))


@pytest.mark.slow  # trains
def test_resume_is_exact_and_load_zoo_restores(tmp_path):
    images = torch.linspace(-1, 1, 64 * 64).reshape(64, 1, 8, 8)  # any images will do
    cfg = {"model": "dcgan", "batch": 16, "model_options": {"width": 8, "latent_dim": 8}, "log_every": 5}
    full = train_zoo(ZooConfig(steps=10, **cfg), images)
    train_zoo(ZooConfig(steps=5, out=str(tmp_path), **cfg), images)
    resumed = train_zoo(ZooConfig(steps=10, out=str(tmp_path), **cfg), images)  # continues from step 5
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert resumed.history == full.history and len(full.history) == 2
    with pytest.raises(ValueError, match="differs from this config"):
        train_zoo(ZooConfig(steps=12, out=str(tmp_path), **{**cfg, "batch": 8}), images)
    loaded = load_zoo(tmp_path)
    torch.testing.assert_close(sample(loaded, 4, seed=1), sample(full.model, 4, seed=1))


@pytest.fixture(scope="module")
def noise_fid():
    from denoisekit.eval.report import evaluate

    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return evaluate(noise, ref="digits", kid_subsets=10)["fid"]


# Tiny models, 200 steps on 8x8 digits (a few seconds each). Measured FIDs (digits feature network, 500
# samples; seeds 0, 1, 2): VAE 19.2 / 16.3 / 17.6, DCGAN 15.7 / 15.7 / 16.6; uniform noise 56.7.
TINY = {"vae": {"lr": 3e-3, "model_options": {"width": 32, "latent_dim": 8}},
        "dcgan": {"lr": 5e-4, "model_options": {"width": 32, "latent_dim": 32}}}


@pytest.mark.slow  # trains
@pytest.mark.parametrize("kind", ["vae", "dcgan"])
def test_tiny_models_learn_digits(kind, noise_fid):
    from denoisekit.eval.report import evaluate

    run = train_zoo(ZooConfig(model=kind, steps=200, batch=64, seed=0, **TINY[kind]))
    x = sample(run.model, 500, seed=1)
    metrics = evaluate(x, ref="digits", kid_subsets=10)
    assert metrics["fid"] < 0.5 * noise_fid, (metrics["fid"], noise_fid)
    assert metrics["class_coverage"] >= 0.6  # most digits appear, not one blurry mode
    assert samples_per_second(run.model, 256, repeats=1) > 100
