"""PatchGAN discriminator and the adversarial losses of the latent-diffusion autoencoder.

- :class:`PatchDiscriminator`: the "NLayerDiscriminator" of Isola et al. 2017 (pix2pix, Sec. 3.2.2 and
  App. 6.1.2): stride-2 4x4 convolutions, LeakyReLU(0.2), a map of real/fake logits ``(B, 1, h, w)``,
  one per overlapping patch. Weights drawn from N(0, 0.02) as in their App. 6.2 (DCGAN's init).
- :func:`hinge_d_loss`, :func:`hinge_g_loss`: the hinge GAN objective (Lim & Ye 2017; Miyato et al.
  2018 eq. 16-17) as used by Esser et al. 2021 / Rombach et al. 2022.
- :func:`adaptive_weight`: Esser et al. 2021 eq. 7,
  ``lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta)``, ``G_L`` the decoder's last layer.
- :func:`disc_factor`: the discriminator is off (0) before ``disc_start`` steps, then 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_choice
from .gan import dcgan_init

NORMS = ("group", "batch", "none")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Shape of a :class:`PatchDiscriminator`: ``layers`` stride-2 convs (receptive field 70 pixels for 3,
    34 for 2), ``channels`` in the first, doubled per layer up to 8x. ``norm``: ``"group"`` (default here:
    per-sample, so real and fake batches do not share statistics and the result does not depend on how a
    batch is split over processes), ``"batch"`` (pix2pix's choice) or ``"none"``."""

    in_channels: int = 3
    channels: int = 64
    layers: int = 3
    norm: Literal["group", "batch", "none"] = "group"

    def __post_init__(self) -> None:
        for name in ("in_channels", "channels", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiscriminatorConfig.{name} must be an integer >= 1, got {value!r}")
        check_choice("discriminator norm", self.norm, NORMS)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """``x (B, C, H, W) -> (B, 1, h, w)`` logits, one per patch (Isola et al. 2017)."""

    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = c = config
        bias = c.norm == "none"  # a norm's shift makes a conv bias redundant
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, c.channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = c.channels
        for n in range(1, c.layers + 1):
            out = c.channels * min(2 ** n, 8)
            stride = 2 if n < c.layers else 1  # the last of these keeps the resolution, as in pix2pix
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=bias), _norm(c.norm, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.body = nn.Sequential(*layers)
        dcgan_init(self)  # pix2pix initialises as DCGAN does

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"PatchDiscriminator expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        return self.body(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])`` (a scalar)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator loss ``-E[D(x_hat)]`` (a scalar)."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, *, delta: float = 1e-4,
                    max_weight: float = 1e4) -> Tensor:
    """``||grad_{last_layer} rec_loss|| / (||grad_{last_layer} g_loss|| + delta)``, clamped to
    ``[0, max_weight]`` and detached (Esser et al. 2021, eq. 7): balances the GAN gradient against the
    reconstruction gradient where they meet, at the decoder's last layer. Keeps both graphs alive."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.norm() / (g_grad.norm() + delta)
    return weight.clamp(0.0, max_weight).detach()


def disc_factor(step: int, disc_start: int) -> float:
    """1 once ``step >= disc_start`` (the adversarial loss is on), else 0."""
    return 1.0 if step >= disc_start else 0.0
