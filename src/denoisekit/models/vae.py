"""A small convolutional variational autoencoder (Kingma & Welling 2014) with a Gaussian prior.

Model: ``p(z) = N(0, I)`` over ``latent_dim`` dimensions, decoder ``p(x | z) = N(mu_theta(z), s^2 I)``
with one output scale ``s`` (learned as ``log s``, "sigma-VAE" of Rybkin et al. 2021, unless fixed by
``output_std``), encoder ``q(z | x) = N(mu_phi(x), diag(sigma_phi(x)^2))``. Training maximises the
evidence lower bound (Kingma & Welling 2014, eq. 10, the "SGVB estimator B")

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))  <=  log p(x),

with the KL term in closed form (their Appendix B) and the expectation estimated with one
reparameterised sample ``z = mu + sigma * eps``.

The encoder and decoder are DCGAN's conv stacks (:func:`~denoisekit.models.gan.down_stack`,
:func:`~denoisekit.models.gan.up_stack`) with GroupNorm instead of BatchNorm, so an example's ELBO
does not depend on the batch it is in. Images ``(B, C, S, S)`` in [-1, 1], ``S`` in {8, 16, 32, 64}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._utils import GeneratorLike, randn, randn_like
from .gan import check_image_size, check_positive_ints, down_stack, up_stack

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class VAEConfig:
    """Shape of a :class:`VAE`: ``image_size`` in {8, 16, 32, 64}, image ``channels``, ``latent_dim``,
    ``width`` (channels of the first encoder layer, doubled per stage; the decoder mirrors it) and
    ``output_std`` (None: learn the decoder's scale ``s``; a number: fix it)."""

    image_size: int = 32
    channels: int = 3
    latent_dim: int = 32
    width: int = 32
    output_std: float | None = None

    def __post_init__(self) -> None:
        check_image_size(self.image_size, "VAEConfig")
        check_positive_ints(self, "channels", "latent_dim", "width")
        if self.output_std is not None and not self.output_std > 0:
            raise ValueError(f"VAEConfig.output_std must be None (learned) or > 0, got {self.output_std!r}")


class ELBO(NamedTuple):
    """Per-example terms in nats, each ``(B,)``: ``elbo = log_likelihood - kl``."""

    elbo: Tensor
    log_likelihood: Tensor
    kl: Tensor


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` per example ``(B,)``, summed over the other dims:
    ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)`` (Kingma & Welling 2014, Appendix B)."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``log N(x; mean, exp(log_std)^2)`` per example ``(B,)``, summed over the other dims (``log_std``
    broadcasts)."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * (z.square() + LOG_2PI) - log_std).flatten(1).sum(1)


def elbo(model: Any, x: Tensor, generator: GeneratorLike = None) -> ELBO:
    """One-sample estimate of the ELBO of ``x`` (Kingma & Welling 2014, eq. 10).

    ``model`` needs ``encode(x) -> (mean, logvar)`` of q(z | x), ``decode(z) -> mean`` of p(x | z) and
    ``output_log_std()`` (any module with these works, e.g. a linear-Gaussian model in a test).
    """
    mean, logvar = model.encode(x)
    z = mean + torch.exp(0.5 * logvar) * randn_like(mean, generator)  # reparameterisation, Sec. 2.4
    ll = gaussian_log_likelihood(x, model.decode(z), model.output_log_std())
    kl = gaussian_kl(mean, logvar)
    return ELBO(ll - kl, ll, kl)


def bits_per_dim(nats: Tensor, x: Tensor) -> Tensor:
    """Negative log-likelihood (or bound) in nats per example -> bits per dimension of ``x[0]``.

    For images in [-1, 1] this is a continuous density; add ``log2(127.5)`` to compare with discrete
    8-bit likelihoods (the density of a [0, 255] bin is 127.5 times smaller in these units).
    """
    return nats / (x[0].numel() * math.log(2))


class VAE(nn.Module):
    """Convolutional VAE ``encode(x) -> (mean, logvar)``, ``decode(z) -> x_mean``, ``sample(n, generator)``."""

    config_class = VAEConfig

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        c = config
        self.encoder = down_stack(c.channels, 2 * c.latent_dim, c.image_size, c.width, "group")
        self.decoder = up_stack(c.latent_dim, c.channels, c.image_size, c.width, "group")
        if c.output_std is None:
            self.log_std = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_std", torch.tensor(math.log(c.output_std)))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, S, S) -> (mean, logvar)``, each ``(B, latent_dim)``."""
        mean, logvar = self.encoder(x).flatten(1).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # exp stays finite in float32

    def decode(self, z: Tensor) -> Tensor:
        """``(B, latent_dim) -> (B, C, S, S)``: the mean of p(x | z)."""
        return self.decoder(z[:, :, None, None])

    def output_log_std(self) -> Tensor:
        return self.log_std

    def forward(self, x: Tensor, generator: GeneratorLike = None) -> ELBO:
        return elbo(self, x, generator)

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        """``n`` images ``(n, C, S, S)``: decoder means of z ~ N(0, I), clamped to [-1, 1] (the usual way
        to show a VAE's samples; adding the pixel noise ``s * eps`` would only blur them)."""
        p = self.log_std
        z = randn((n, self.config.latent_dim), generator, device=p.device, dtype=p.dtype)
        return self.decode(z).clamp(-1, 1)
