"""Noisy-image classifiers for classifier guidance: ``net(x (B, C, H, W), time (B,)) -> logits (B, K)``.

:class:`NoiseClassifier` is the classifier of Dhariwal & Nichol 2021 ("ADM", Sec. 4.1: the
downsampling trunk of their U-Net, pooled to logits): the encoder half of
:class:`~denoisekit.models.unet.UNet` (the same time-embedded residual blocks, optional self-attention
at the lowest resolution and in the middle), then GroupNorm, SiLU, a global average pool (ADM's
"adaptive" pooling; their best used an attention pool) and a linear layer to the logits. It sees
native-frame noisy images ``x_t`` and the process's time, as the diffusion network does. :class:`NoisyClassifier` makes it a VE-frame ``classifier(y, sigma) -> logits`` for any
process, the form :class:`~denoisekit.guidance.ClassifierGuidance` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..prediction import Clock, TimeInput
from ..process import Process
from .layers import TimestepEmbedding, as_time, check_divisible
from .unet import AttentionBlock, Block, ResBlock


@dataclass(frozen=True)
class NoiseClassifierConfig:
    """Shape of a :class:`NoiseClassifier`.

    ``channels * channel_mult[i]`` channels at level ``i``, ``num_res_blocks`` residual blocks per
    level and a stride-2 convolution between levels, so ``H`` and ``W`` must be multiples of
    ``2 ** (len(channel_mult) - 1)``; ``attention`` adds self-attention (``head_channels`` per head)
    after the blocks of the lowest resolution and in the middle. ``time_scale`` multiplies the time
    before the Fourier features (see :mod:`denoisekit.models.layers`).
    """

    in_channels: int = 3
    num_classes: int = 10
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention: bool = True
    head_channels: int = 32
    dropout: float = 0.0
    norm_groups: int = 32
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.channel_mult, list):  # YAML gives lists: keep the config hashable
            object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        for name, low in (("in_channels", 1), ("num_classes", 2), ("channels", 1), ("num_res_blocks", 1),
                          ("head_channels", 1), ("norm_groups", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"NoiseClassifierConfig.{name} must be an integer >= {low}, got {value!r}")
        if not self.channel_mult or not all(isinstance(m, int) and m >= 1 for m in self.channel_mult):
            raise ValueError(f"NoiseClassifierConfig.channel_mult must be a non-empty tuple of integers >= 1, "
                             f"got {self.channel_mult!r}")
        if self.attention and self.width % self.head_channels:
            raise ValueError(f"NoiseClassifierConfig: {self.width} channels at the lowest resolution are not "
                             f"divisible by head_channels={self.head_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"NoiseClassifierConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.time_scale, (int, float)) and math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"NoiseClassifierConfig.time_scale must be a finite number > 0, got {self.time_scale!r}")

    @property
    def width(self) -> int:
        """Channels at the lowest resolution."""
        return self.channels * self.channel_mult[-1]

    @property
    def divisor(self) -> int:
        """``H`` and ``W`` must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)


class NoiseClassifier(nn.Module):
    """ADM's half-U-Net classifier ``net(x (B, C, H, W), time (B,) or scalar) -> logits (B, num_classes)``."""

    config_class = NoiseClassifierConfig

    def __init__(self, config: NoiseClassifierConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = NoiseClassifierConfig(**overrides)
        elif overrides:
            raise ValueError("give a NoiseClassifierConfig or keyword overrides, not both")
        self.config = c = config
        emb_dim = 4 * c.channels
        self.time_embed = TimestepEmbedding(emb_dim, freq_dim=128, time_scale=c.time_scale)

        def block(c_in: int, c_out: int, attention: bool) -> Block:
            attn = AttentionBlock(c_out, c.head_channels, c.norm_groups, None) if attention else None
            return Block(ResBlock(c_in, c_out, emb_dim, c.norm_groups, c.dropout), attn)

        self.conv_in = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch, last = c.channels, len(c.channel_mult) - 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                self.down.append(block(ch, c.channels * mult, c.attention and level == last))
                ch = c.channels * mult
            if level != last:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([block(ch, ch, c.attention), block(ch, ch, False)])
        self.norm_out = nn.GroupNorm(math.gcd(c.norm_groups, ch), ch)
        self.head = nn.Linear(ch, c.num_classes)

    def forward(self, x: Tensor, time: Tensor | float) -> Tensor:
        c = self.config
        check_divisible(x, c.in_channels, c.divisor, f"NoiseClassifier with {len(c.channel_mult)} levels")
        emb = F.silu(self.time_embed(as_time(time, x)).to(x.dtype))  # ResBlock.emb expects SiLU(emb)
        h = self.conv_in(x)
        for layer in self.down:
            h = layer(h, emb, None, None) if isinstance(layer, Block) else layer(h)
        for layer in self.mid:
            h = layer(h, emb, None, None)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))  # (B, C): global average pool
        return self.head(h)


class NoisyClassifier(nn.Module):
    """A noisy-image classifier as a VE-frame ``classifier(y, sigma) -> logits (B, K)`` for any process.

    The network gets what a :class:`~denoisekit.prediction.Denoiser` with the same ``process`` and
    ``time_input`` gives its network: the native-frame ``x = alpha * y`` and the time of their shared
    :class:`~denoisekit.prediction.Clock` (``"model"``: the process's clock; ``"t"``; ``"log_sigma"``:
    ``log(sigma_ve) / 4``), so a classifier trained on ``x_t`` of a process guides any sampler through
    :class:`~denoisekit.guidance.ClassifierGuidance`.
    """

    def __init__(self, net: nn.Module, process: Process, time_input: TimeInput = "model"):
        super().__init__()
        self.net, self.clock = net, Clock(process, time_input)
        self.info: dict[str, Any] = {}  # filled by training / loading: accuracy by noise level, config

    @property
    def process(self) -> Process:
        return self.clock.process

    @property
    def time_input(self) -> TimeInput:
        return self.clock.time_input

    def logits_native(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits of native-frame ``x`` at process times ``t`` ``(B,)`` (what training feeds)."""
        return self.net(x, self.clock.time(t).to(device=x.device, dtype=x.dtype))

    def forward(self, y: Tensor, sigma: Tensor | float) -> Tensor:
        """Logits ``(B, K)`` of VE-frame ``y`` ``(B, ...)`` at VE noise ``sigma`` (scalar or ``(B,)``)."""
        return self.net(*self.clock.native(y, sigma))
