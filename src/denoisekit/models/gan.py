"""DCGAN (Radford et al. 2016): a convolutional generator and discriminator sized by resolution, and the
non-saturating GAN loss (Goodfellow et al. 2014).

Architecture (Radford et al. 2016, Sec. 3 and Fig. 1), for an ``S x S`` image, ``S`` a power of two in
8..64, ``n = log2(S) - 2`` resolution steps and ``w = width``:

- generator ``z (B, latent_dim) -> x (B, C, S, S)`` in [-1, 1]: a 4x4 transposed conv from the latent
  to ``w * 2^(n-1)`` channels at 4x4, then ``n`` stride-2 4x4 transposed convs halving the channels
  and doubling the side, BatchNorm + ReLU after every layer but the last, tanh at the output;
- discriminator ``x -> logit (B,)``: the mirror image, stride-2 4x4 convs with LeakyReLU(0.2),
  BatchNorm on all but the first, and a 4x4 conv to one logit;
- weights from N(0, 0.02), BatchNorm scales from N(1, 0.02) (Sec. 4).

The conv stacks (:func:`up_stack`, :func:`down_stack`) take their normalisation as a parameter so that
:mod:`denoisekit.models.vae` reuses them with GroupNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import GeneratorLike, check_choice, randn

Norm = Literal["batch", "group", "none"]
NORMS = ("batch", "group", "none")
#: Groups of the GroupNorm option (fewer when a layer has fewer channels).
NORM_GROUPS = 32


def check_image_size(size: int, model: str) -> int:
    """The number of stride-2 stages from 4x4 to ``size``; ``ValueError`` unless ``size`` is 8, 16, 32 or 64."""
    if not isinstance(size, int) or size not in (8, 16, 32, 64):
        raise ValueError(f"{model}: image_size must be 8, 16, 32 or 64, got {size!r}")
    return int(math.log2(size)) - 2


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """BatchNorm, GroupNorm (``gcd(NORM_GROUPS, channels)`` groups) or nothing, by ``kind``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(NORM_GROUPS, channels), channels)
    return nn.Identity()


def up_stack(latent_dim: int, out_channels: int, image_size: int, width: int, norm: Norm) -> nn.Sequential:
    """``(B, latent_dim, 1, 1) -> (B, out_channels, S, S)``, no output activation: DCGAN's generator body."""
    check_choice("norm", norm, NORMS)
    n = check_image_size(image_size, "up_stack")
    c = width * 2 ** (n - 1)
    layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, c, 4, 1, 0, bias=norm == "none"), norm_layer(norm, c),
                               nn.ReLU()]                                              # 1 -> 4
    for i in range(n):
        last = i == n - 1
        c_out = out_channels if last else c // 2
        layers.append(nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=last or norm == "none"))  # side x2
        if not last:
            layers += [norm_layer(norm, c_out), nn.ReLU()]
        c = c_out
    return nn.Sequential(*layers)


def down_stack(in_channels: int, out_dim: int, image_size: int, width: int, norm: Norm) -> nn.Sequential:
    """``(B, in_channels, S, S) -> (B, out_dim, 1, 1)``: DCGAN's discriminator body (no norm on the first layer)."""
    check_choice("norm", norm, NORMS)
    n = check_image_size(image_size, "down_stack")
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(n):
        c_out = width * 2 ** i
        layers.append(nn.Conv2d(c, c_out, 4, 2, 1, bias=i == 0 or norm == "none"))       # side / 2
        if i > 0:
            layers.append(norm_layer(norm, c_out))
        layers.append(nn.LeakyReLU(0.2))
        c = c_out
    layers.append(nn.Conv2d(c, out_dim, 4, 1, 0))                                       # 4 -> 1
    return nn.Sequential(*layers)


def check_positive_ints(config: object, *names: str) -> None:
    """``ValueError`` naming the config class unless every field in ``names`` is an int >= 1."""
    for name in names:
        v = getattr(config, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be an integer >= 1, got {v!r}")


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2016, Sec. 4: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class DCGANConfig:
    """Shape of a :class:`DCGAN`: ``image_size`` in {8, 16, 32, 64}, ``channels`` of the image,
    ``latent_dim`` of z ~ N(0, I) (100 in the paper), ``width`` = channels of the first discriminator
    layer (64 in the paper; the generator mirrors it)."""

    image_size: int = 32
    channels: int = 3
    latent_dim: int = 100
    width: int = 64

    def __post_init__(self) -> None:
        check_image_size(self.image_size, "DCGANConfig")
        check_positive_ints(self, "channels", "latent_dim", "width")


class Generator(nn.Module):
    """DCGAN generator ``z (B, latent_dim) -> images (B, C, S, S)`` in [-1, 1]."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        self.body = up_stack(config.latent_dim, config.channels, config.image_size, config.width, "batch")

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.body(z[:, :, None, None]))

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        """``n`` images from z ~ N(0, I); with a list of generators, image ``i`` uses generator ``i``."""
        p = next(self.parameters())
        return self(randn((n, self.config.latent_dim), generator, device=p.device, dtype=p.dtype))


class Discriminator(nn.Module):
    """DCGAN discriminator ``images (B, C, S, S) -> logits (B,)`` (logit of "real")."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        self.body = down_stack(config.channels, 1, config.image_size, config.width, "batch")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).flatten()


class DCGAN(nn.Module):
    """A generator and a discriminator in one module (one state dict, one checkpoint)."""

    config_class = DCGANConfig

    def __init__(self, config: DCGANConfig = DCGANConfig()):
        super().__init__()
        self.config = config
        self.generator, self.discriminator = Generator(config), Discriminator(config)
        dcgan_init(self)

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        """``n`` generated images ``(n, C, S, S)`` in [-1, 1]."""
        return self.generator.sample(n, generator)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Per-example ``-log D(x) - log(1 - D(G(z)))`` from logits (Goodfellow et al. 2014, eq. 1, as a loss).

    ``softplus(-l) = -log sigmoid(l)`` and ``softplus(l) = -log(1 - sigmoid(l))``, stable for any logit.
    """
    return F.softplus(-real_logits) + F.softplus(fake_logits)


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Per-example non-saturating generator loss ``-log D(G(z))`` (Goodfellow et al. 2014, Sec. 3: it has
    the same fixed point as minimising ``log(1 - D(G(z)))`` but strong gradients early in training)."""
    return F.softplus(-fake_logits)
