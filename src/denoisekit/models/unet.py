"""ADM-style U-Net: ``net(x (B, C, H, W), time (B,), cond=None) -> (B, C_out, H, W)``.

The architecture of Ho et al. 2020 as improved by Dhariwal & Nichol 2021 ("ADM", Sec. 3):

- residual blocks ``x + conv(drop(SiLU(AdaGN(conv(SiLU(GN(x))), emb))))`` where the time (+ class)
  embedding enters as a scale and shift of the second GroupNorm, ``AdaGN(h, y) = y_s GN(h) + y_b``
  (ADM eq. in Sec. 3, "adaptive group normalization"); the last conv of each block starts at zero;
- ``len(channel_mult)`` levels, each of ``num_res_blocks`` blocks then a stride-2 conv down; the
  decoder mirrors it with ``num_res_blocks + 1`` blocks per level fed by concatenated skips, and
  nearest-neighbour upsampling + conv;
- multi-head self-attention at the chosen ``attention_levels`` (0 = full resolution) and in the
  middle, ``head_channels`` channels per head;
- a class embedding with one extra row for the null label (classifier-free guidance, Ho & Salimans
  2022); optional cross-attention to ``cond["context"]`` after each self-attention (as the
  "SpatialTransformer" of Rombach et al. 2022) and extra input channels ``cond["concat"]``
  (Saharia et al. 2022, Palette);
- a zero-initialised output conv, so the network starts as the zero function.

Inputs of any channel count and any ``H, W`` divisible by ``2 ** (len(channel_mult) - 1)``. See
:mod:`denoisekit.models.layers` for the time and ``cond`` conventions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Attention, SampleDropout, TimestepEmbedding, check_divisible, embed_times, parse_conditioning


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet`.

    ``channels * channel_mult[i]`` channels at level ``i``; ``num_res_blocks`` blocks per encoder
    level (an int, or one per level); self-attention at ``attention_levels`` and (``mid_attention``)
    in the middle; ``out_channels=None`` means ``in_channels``; ``concat_channels`` extra input
    channels from ``cond["concat"]``; ``context_dim`` enables cross-attention to ``cond["context"]``;
    ``num_classes`` adds a label embedding (+ a null label). ``time_scale`` multiplies the time before
    the log-spaced Fourier features; the default suits t in [0, 1], step indices and EDM's c_noise.
    ``second_time`` adds a second time input (MeanFlow's interval ``t - r``:
    :func:`~denoisekit.models.layers.embed_times`).
    GroupNorms over ``width`` channels use ``gcd(norm_groups, width)`` groups.
    ``channels_last`` runs the convolutions in NHWC memory layout (no faster on the 2-core CPU we
    measured; worth trying on GPUs).

    The defaults are the classic ADM layout. For small images a "light top" layout trains ~1.5x
    faster at the same parameter count (``benchmarks/unet_throughput.py``): ``channels=48,
    channel_mult=(1, 2, 3), num_res_blocks=(1, 2, 3), head_channels=48``: a convolution's cost per
    parameter grows with the pixels it runs over, so capacity is cheapest at low resolution
    (Hoogeboom et al. 2023).
    """

    in_channels: int = 3
    out_channels: int | None = None
    concat_channels: int = 0
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 2
    attention_levels: tuple[int, ...] = (1, 2)
    mid_attention: bool = True
    head_channels: int = 32
    dropout: float = 0.0
    norm_groups: int = 32
    num_classes: int | None = None
    context_dim: int | None = None
    time_scale: float = 1.0
    channels_last: bool = False
    second_time: bool = False

    def __post_init__(self) -> None:
        # YAML gives lists: store tuples so the config stays hashable.
        for name in ("channel_mult", "attention_levels", "num_res_blocks"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("in_channels", "channels", "head_channels", "norm_groups"):
            _check_int(name, getattr(self, name), 1)
        _check_int("concat_channels", self.concat_channels, 0)
        for name in ("out_channels", "num_classes", "context_dim"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if not self.channel_mult or not all(isinstance(m, int) and m >= 1 for m in self.channel_mult):
            raise ValueError(f"UNetConfig.channel_mult must be a non-empty tuple of integers >= 1, "
                             f"got {self.channel_mult!r}")
        blocks = self.blocks_per_level
        if len(blocks) != len(self.channel_mult) or not all(isinstance(n, int) and n >= 1 for n in blocks):
            raise ValueError(f"UNetConfig.num_res_blocks must be an integer >= 1 or one per level "
                             f"({len(self.channel_mult)}), got {self.num_res_blocks!r}")
        levels = range(len(self.channel_mult))
        if not all(isinstance(i, int) and i in levels for i in self.attention_levels):
            raise ValueError(f"UNetConfig.attention_levels must be level indices in 0..{len(levels) - 1}, "
                             f"got {self.attention_levels!r}")
        attended = set(self.attention_levels) | ({len(self.channel_mult) - 1} if self.mid_attention else set())
        for level in sorted(attended):
            width = self.channels * self.channel_mult[level]
            if width % self.head_channels:
                raise ValueError(f"UNetConfig: {width} channels at attention level {level} not divisible by "
                                 f"head_channels={self.head_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.time_scale, (int, float)) and math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"UNetConfig.time_scale must be a finite number > 0, got {self.time_scale!r}")
        if not isinstance(self.second_time, bool):
            raise ValueError(f"UNetConfig.second_time must be true or false, got {self.second_time!r}")

    @property
    def blocks_per_level(self) -> tuple[int, ...]:
        n = self.num_res_blocks
        return (n,) * len(self.channel_mult) if isinstance(n, int) else tuple(n)

    @property
    def divisor(self) -> int:
        """``H`` and ``W`` must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"UNetConfig.{name} must be an integer >= {low}, got {value!r}")


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``skip(x) + conv2(drop(SiLU(AdaGN(conv1(SiLU(GN(x))), emb))))`` (ADM, Sec. 3)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.groups = math.gcd(groups, c_out)  # the second norm has no affine: the embedding's scale/shift is it
        self.dropout = SampleDropout(dropout) if dropout else nn.Identity()
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)    # (B, C, 1, 1) each
        h = torch.addcmul(shift, F.group_norm(h, self.groups), scale + 1)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """``x + Attn(GN(x))`` over the ``H*W`` positions, then ``+ CrossAttn(LN(x), context)`` if enabled."""

    def __init__(self, channels: int, head_channels: int, groups: int, context_dim: int | None):
        super().__init__()
        heads = channels // head_channels
        self.norm = nn.GroupNorm(math.gcd(groups, channels), channels)
        self.attn = Attention(channels, heads, zero_out=True)
        self.cross = None
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(channels)
            self.cross = Attention(channels, heads, context_dim=context_dim, zero_out=True)

    def forward(self, x: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        b, c, hgt, wid = x.shape
        # (B, C, H, W) -> (B, HW, C): a view when x is channels-last
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)
        out = x.permute(0, 2, 3, 1).reshape(b, hgt * wid, c) + self.attn(tokens)
        if self.cross is not None and context is not None:
            out = out + self.cross(self.cross_norm(out), context, mask)
        out = out.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)
        return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


class Block(nn.Module):
    """One U-Net stage: a residual block, optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context, mask)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """ADM U-Net ``net(x (B, C, H, W), time (B,) or scalar, cond=None) -> (B, C_out, H, W)``."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = UNetConfig(**overrides)
        elif overrides:
            raise ValueError("give a UNetConfig or keyword overrides, not both")
        self.config = c = config
        emb_dim = 4 * c.channels
        self.time_embed = TimestepEmbedding(emb_dim, freq_dim=128, time_scale=c.time_scale)
        # Row num_classes is the null label (unconditional), trained by label dropout for CFG.
        self.label_embed = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes else None

        def block(c_in: int, c_out: int, attention: bool) -> Block:
            attn = AttentionBlock(c_out, c.head_channels, c.norm_groups, c.context_dim) if attention else None
            return Block(ResBlock(c_in, c_out, emb_dim, c.norm_groups, c.dropout), attn)

        self.conv_in = nn.Conv2d(c.in_channels + c.concat_channels, c.channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [c.channels], c.channels
        last = len(c.channel_mult) - 1
        for level, (mult, n) in enumerate(zip(c.channel_mult, c.blocks_per_level, strict=True)):
            for _ in range(n):
                self.down.append(block(ch, c.channels * mult, level in c.attention_levels))
                ch = c.channels * mult
                skips.append(ch)
            if level != last:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([block(ch, ch, c.mid_attention), block(ch, ch, False)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(c.channel_mult))):
            mult, n = c.channel_mult[level], c.blocks_per_level[level]
            for _ in range(n + 1):
                self.up.append(block(ch + skips.pop(), c.channels * mult, level in c.attention_levels))
                ch = c.channels * mult
            if level != 0:
                self.up.append(Upsample(ch))
        assert not skips
        self.norm_out = nn.GroupNorm(math.gcd(c.norm_groups, ch), ch)
        self.conv_out = _zero(nn.Conv2d(ch, c.out_channels or c.in_channels, 3, padding=1))
        # last, so that every other weight is the plain network's at the same seed
        self.second_time_embed = TimestepEmbedding(emb_dim, freq_dim=128, time_scale=c.time_scale) \
            if c.second_time else None
        if c.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None, *,
                residuals: Sequence[Tensor] | None = None, features: Sequence[Tensor] | None = None,
                second_time: Tensor | float | None = None) -> Tensor:
        """``residuals``: one tensor per encoder skip (``len(self.skip_channels)``) then one for the middle
        block's output, added where the decoder reads them (ControlNet, Zhang et al. 2023, Sec. 3.2);
        ``features``: one per level, added to the encoder's activations after the level's last block
        (T2I-Adapter, Mou et al. 2023, Sec. 3.2). None: the plain U-Net, bit for bit. ``second_time``: the
        second time input of a network built with one (default 0)."""
        c = self.config
        h, emb, ctx, mask = self.embed(x, time, cond, second_time=second_time)
        h, skips = self.encode(h, emb, ctx, mask, features=features)
        if residuals is not None:
            if len(residuals) != len(skips) + 1:
                raise ValueError(f"residuals: expected {len(skips) + 1} tensors (one per skip, then the middle), "
                                 f"got {len(residuals)}")
            skips = [s + r for s, r in zip(skips, residuals[:-1], strict=True)]
            h = h + residuals[-1]
        for layer in self.up:
            if isinstance(layer, Block):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb, ctx, mask)
            else:
                h = layer(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.contiguous() if c.channels_last else out

    @property
    def skip_channels(self) -> list[int]:
        """Channels of each encoder skip, in order (what ``residuals`` must match, then the middle's)."""
        c = self.config
        out = [c.channels]
        for layer in self.down:
            out.append(layer.res.conv1.out_channels if isinstance(layer, Block) else layer.out_channels)
        return out

    @property
    def level_ends(self) -> list[int]:
        """Index in :attr:`down` of each level's last block (where ``features`` are added)."""
        ends, i = [], 0
        for n in self.config.blocks_per_level:
            i += n
            ends.append(i - 1)
            i += 1  # the level's downsampling conv (none after the last level: the loop ends)
        return ends

    def embed(self, x: Tensor, time: Tensor | float, cond: Any = None, *, second_time: Tensor | float | None = None
              ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(conv_in(x [+ concat]), emb, context, context_mask)``: the encoder's inputs."""
        c = self.config
        check_divisible(x, c.in_channels, c.divisor, f"UNet with {len(c.channel_mult)} levels")
        info = parse_conditioning(cond, x, num_classes=c.num_classes, context_dim=c.context_dim,
                                  concat_channels=c.concat_channels)
        emb = embed_times(self.time_embed, self.second_time_embed, time, second_time, x)
        if self.label_embed is not None:
            emb = emb + self.label_embed(info.labels)
        emb = F.silu(emb)  # every consumer (ResBlock.emb) starts with SiLU: apply it once
        if info.concat is not None:
            x = torch.cat([x, info.concat], dim=1)
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.conv_in(x), emb, info.context, info.context_mask

    def encode(self, h: Tensor, emb: Tensor, ctx: Tensor | None, mask: Tensor | None, *,
               features: Sequence[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """The encoder and middle block from ``conv_in``'s output: ``(middle output, skips)``."""
        ends = {}
        if features is not None:
            if len(features) != len(self.config.channel_mult):
                raise ValueError(f"features: expected {len(self.config.channel_mult)} tensors (one per level), "
                                 f"got {len(features)}")
            ends = dict(zip(self.level_ends, features, strict=True))
        skips = [h]
        for i, layer in enumerate(self.down):
            h = layer(h, emb, ctx, mask) if isinstance(layer, Block) else layer(h)
            if i in ends:
                h = h + ends[i]
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb, ctx, mask)
        return h, skips
