"""KL-regularised convolutional autoencoder: the first stage of latent diffusion.

``encode(x (B, C, H, W)) -> DiagonalGaussian over z (B, latent_channels, H/f, W/f)``,
``decode(z) -> x_hat (B, C, H, W)``. The architecture is the VQGAN encoder/decoder of Esser et al.
2021 (Sec. 3 and the architecture table of their appendix) as used, with a KL instead of a VQ
bottleneck, by Rombach et al. 2022 ("LDM", Sec. 3.1 and App. G):

- encoder: ``conv_in``; per level ``i`` (``channels * channel_mult[i]`` channels) ``num_res_blocks``
  residual blocks ``x + conv(SiLU(GN(conv(SiLU(GN(x))))))``, then a stride-2 conv down (not after the
  last level); a middle block ``Res, Attn, Res``; ``GN, SiLU, conv`` to ``2 * latent_channels`` (mean
  and log-variance), and LDM's 1x1 ``quant_conv``;
- decoder: LDM's 1x1 ``post_quant_conv``; ``conv_in``; the middle block; per level, deepest first,
  ``num_res_blocks + 1`` residual blocks, then nearest x2 + conv up (not after level 0); ``GN, SiLU,
  conv_out``. ``decoder.conv_out`` is the "last layer" of the GAN's adaptive weight (Esser eq. 7).

The downsampling factor is ``f = 2 ** (len(channel_mult) - 1)``, one of :data:`FACTORS`.

Latent scaling (LDM Sec. 4.3.2): the diffusion model sees ``(z - shift) * scale_factor``,
where ``scale_factor = 1 / std(z)`` over training data (:func:`compute_latent_scale`). Both numbers are
buffers, so they are saved and loaded with the weights; ``encode_latents`` applies them and
``decode_latents`` undoes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import GeneratorLike, randn_like
from .layers import SampleDropout, check_divisible
from .unet import AttentionBlock, Upsample
from .vae import gaussian_kl

#: Supported spatial downsampling factors f (2 is for tiny tests; LDM uses 4 and 8).
FACTORS = (2, 4, 8)
#: Log-variance clamp of the posterior, as in LDM (keeps exp() finite early in training).
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of an :class:`Autoencoder`.

    ``factor`` is the spatial downsampling f; ``channel_mult`` (one entry per level, ``log2(f) + 1``
    of them; default ``(1, 2, 4, 4)`` cut to that length, as LDM's KL-f4/f8) scales ``channels``;
    ``num_res_blocks`` per encoder level (the decoder has one more); ``latent_channels`` of z;
    ``mid_attention`` adds single-head self-attention in the middle blocks. GroupNorms over ``width``
    channels use ``gcd(norm_groups, width)`` groups.
    """

    in_channels: int = 3
    channels: int = 64
    factor: int = 4
    channel_mult: tuple[int, ...] | None = None
    num_res_blocks: int = 1
    latent_channels: int = 4
    mid_attention: bool = True
    norm_groups: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "channels", "num_res_blocks", "latent_channels", "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AutoencoderConfig.{name} must be an integer >= 1, got {value!r}")
        if self.factor not in FACTORS or isinstance(self.factor, bool):
            raise ValueError(f"AutoencoderConfig.factor must be one of {', '.join(map(str, FACTORS))} "
                             f"(the spatial downsampling), got {self.factor!r}")
        if self.channel_mult is None:
            object.__setattr__(self, "channel_mult", (1, 2, 4, 4)[:self.levels])
        elif isinstance(self.channel_mult, list):  # YAML gives lists
            object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        mult = self.channel_mult
        if not isinstance(mult, tuple) or not all(isinstance(m, int) and m >= 1 for m in mult):
            raise ValueError(f"AutoencoderConfig.channel_mult must be integers >= 1, got {mult!r}")
        if len(mult) != self.levels:
            raise ValueError(f"AutoencoderConfig.channel_mult needs log2(factor) + 1 = {self.levels} entries for "
                             f"factor {self.factor}, got {len(mult)}: {mult!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AutoencoderConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def levels(self) -> int:
        return int(math.log2(self.factor)) + 1

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(latent_channels, H/f, W/f)`` of an ``H x W`` image."""
        return self.latent_channels, height // self.factor, width // self.factor


class DiagonalGaussian:
    """A diagonal Gaussian ``N(mean, diag(exp(logvar)))`` over ``(B, C, h, w)`` latents.

    The approximate posterior q(z|x) of a VAE (Kingma & Welling 2014): ``sample`` uses the
    reparameterisation ``z = mean + std * eps`` (their eq. 10), ``kl`` the closed-form KL divergence
    to N(0, I) (their App. B), summed over all but the batch dimension.
    """

    def __init__(self, parameters: Tensor):
        if parameters.ndim < 2 or parameters.shape[1] % 2:
            raise ValueError(f"expected (B, 2C, ...) mean and log-variance, got shape {tuple(parameters.shape)}")
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = self.std.square()

    def sample(self, generator: GeneratorLike = None) -> Tensor:
        """A reparameterised sample ``mean + std * eps`` (differentiable in mean and std)."""
        return self.mean + self.std * randn_like(self.mean, generator)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """``KL(q || N(0, I))`` per sample ``(B,)``: ``0.5 * sum(mean^2 + var - 1 - logvar)``."""
        return gaussian_kl(self.mean, self.logvar)


class ResnetBlock(nn.Module):
    """``skip(x) + conv2(drop(SiLU(GN(conv1(SiLU(GN(x)))))))`` (Esser et al. 2021; no time embedding)."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(math.gcd(groups, c_out), c_out)
        self.dropout = SampleDropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class MidBlock(nn.Module):
    """``Res, (self-attention), Res`` at the lowest resolution."""

    def __init__(self, channels: int, groups: int, dropout: float, attention: bool):
        super().__init__()
        self.res1 = ResnetBlock(channels, channels, groups, dropout)
        # one head over all channels, as in VQGAN; the unet block starts as the identity (zero projection)
        self.attn = AttentionBlock(channels, channels, groups, None) if attention else None
        self.res2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x, None, None)
        return self.res2(x)


def _out_head(channels: int, out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(math.gcd(groups, channels), channels), nn.SiLU(),
                         nn.Conv2d(channels, out, 3, padding=1))


class Encoder(nn.Module):
    """``x (B, C, H, W) -> (B, 2 * latent_channels, H/f, W/f)`` posterior parameters."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        assert c.channel_mult is not None
        self.conv_in = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        layers: list[nn.Module] = []
        ch = c.channels
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers.append(ResnetBlock(ch, c.channels * mult, c.norm_groups, c.dropout))
                ch = c.channels * mult
            if level != c.levels - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = MidBlock(ch, c.norm_groups, c.dropout, c.mid_attention)
        self.out = _out_head(ch, 2 * c.latent_channels, c.norm_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mid(self.down(self.conv_in(x))))


class Decoder(nn.Module):
    """``z (B, latent_channels, h, w) -> (B, C, h*f, w*f)``."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        assert c.channel_mult is not None
        ch = c.channels * c.channel_mult[-1]
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.mid = MidBlock(ch, c.norm_groups, c.dropout, c.mid_attention)
        layers: list[nn.Module] = []
        for level in reversed(range(c.levels)):
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResnetBlock(ch, c.channels * c.channel_mult[level], c.norm_groups, c.dropout))
                ch = c.channels * c.channel_mult[level]
            if level != 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(math.gcd(c.norm_groups, ch), ch)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Autoencoder(nn.Module):
    """KL autoencoder (module docstring): ``encode`` -> :class:`DiagonalGaussian`, ``decode``, scaled latents."""

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1)
        self.decoder = Decoder(c)
        # float64 buffers: saved with the weights; 1 and 0 until compute_latent_scale sets them
        self.register_buffer("scale_factor", torch.ones((), dtype=torch.float64))
        self.register_buffer("shift", torch.zeros((), dtype=torch.float64))

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output conv weight: where Esser et al. (eq. 7) compare gradient norms."""
        return self.decoder.conv_out.weight

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x) for images ``(B, C, H, W)`` with ``H, W`` divisible by ``factor``."""
        c = self.config
        check_divisible(x, c.in_channels, c.factor, f"Autoencoder with factor {c.factor}")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        c = self.config
        if z.ndim != 4 or z.shape[1] != c.latent_channels:
            raise ValueError(f"Autoencoder.decode expects latents of shape (B, {c.latent_channels}, h, w), "
                             f"got {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor, sample_posterior: bool = True,
                generator: GeneratorLike = None) -> tuple[Tensor, DiagonalGaussian]:
        """``(x_hat, posterior)``: decode a posterior sample (training) or its mode."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    # -- scaled latents for the diffusion model -----------------------------------------------------

    def set_latent_scale(self, scale_factor: float, shift: float = 0.0) -> None:
        if not (math.isfinite(scale_factor) and scale_factor > 0 and math.isfinite(shift)):
            raise ValueError(f"scale_factor must be finite and > 0 and shift finite, got {scale_factor}, {shift}")
        self.scale_factor.fill_(scale_factor)
        self.shift.fill_(shift)

    def encode_latents(self, x: Tensor, sample: bool = False, generator: GeneratorLike = None) -> Tensor:
        """Scaled latents ``(z - shift) * scale_factor`` of images, z the posterior mode (or a sample)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return ((z - self.shift) * self.scale_factor).to(z.dtype)

    def decode_latents(self, z: Tensor) -> Tensor:
        """Images from scaled latents: ``decode(z / scale_factor + shift)``."""
        return self.decode((z / self.scale_factor + self.shift).to(z.dtype))


@torch.no_grad()
def compute_latent_scale(model: Autoencoder, images: Tensor | Iterable[Tensor], *, center: bool = False,
                         sample: bool = True, generator: torch.Generator | None = None,
                         batch_size: int = 256) -> tuple[float, float]:
    """``(scale_factor, shift)`` making the latents of ``images`` unit-variance (LDM Sec. 4.3.2).

    ``scale_factor = 1 / std(z)`` over every latent element of the data; ``center=True`` also returns
    ``shift = mean(z)`` (otherwise 0, as in LDM). ``sample=True`` uses posterior samples (the latents LDM
    trains on), else the posterior mode. ``images``: a ``(N, C, H, W)`` tensor or an iterable of batches.
    ``generator`` draws the posterior noise (one generator for the whole stream of batches). Statistics
    are accumulated in float64. Does not modify ``model``: see ``set_latent_scale``.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    n, total, total_sq = 0, 0.0, 0.0
    for x in batches:
        post = model.encode(x.to(device))
        z = (post.sample(generator) if sample else post.mode()).double()
        n, total, total_sq = n + z.numel(), total + float(z.sum()), total_sq + float(z.square().sum())
    model.train(was)
    if n < 2:
        raise ValueError("compute_latent_scale needs at least one image")
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / (n - 1)
    if var <= 0:
        raise ValueError("the latents have zero variance over these images; cannot scale them")
    return 1.0 / math.sqrt(var), (mean if center else 0.0)
