"""Diffusion Transformer: ``net(x (B, C, H, W), time (B,), cond=None) -> (B, C_out, H, W)``.

DiT of Peebles & Xie 2023: the image is cut into ``patch x patch`` patches, linearly embedded, given a
fixed 2-D sin-cos positional embedding (MAE, He et al. 2022; computed for the actual grid, so any
``H, W`` divisible by ``patch`` works), and processed by transformer blocks conditioned by
**adaLN-Zero** (Sec. 3.2): the time (+ class) embedding ``c`` regresses per-block shift, scale and
gate vectors ``(g, b)`` of each LayerNorm and residual branch, with the regression initialised to
zero so every block starts as the identity::

    x = x + gate_msa * Attn(LN(x) * (1 + scale_msa) + shift_msa)
    x = x + CrossAttn(LN(x), context)                          # optional (text tokens)
    x = x + gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)

The final layer is an adaLN-modulated LayerNorm and a zero-initialised linear map back to patches,
then "unpatchify". Cross-attention (not in DiT; as PixArt-alpha, Chen et al. 2023) has a
zero-initialised output so it too starts as the identity. Sizes of the paper's Table 1 are in
:data:`DIT_SIZES` (``"DiT-XL/2"`` ...), plus tiny ``"DiT-T/*"`` ones for CPUs; see
:func:`dit_config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Attention, TimestepEmbedding, check_divisible, embed_times, parse_conditioning


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a :class:`DiT`: ``depth`` blocks of width ``hidden`` with ``heads`` heads on
    ``patch x patch`` patches; ``mlp_ratio`` widens the MLP. ``out_channels=None`` means
    ``in_channels``; ``concat_channels``, ``context_dim``, ``num_classes``, ``time_scale`` and ``second_time``
    as in :class:`~denoisekit.models.unet.UNetConfig`."""

    in_channels: int = 3
    out_channels: int | None = None
    concat_channels: int = 0
    patch: int = 2
    hidden: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    context_dim: int | None = None
    time_scale: float = 1.0
    second_time: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "patch", "hidden", "depth", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiTConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.concat_channels, int) or self.concat_channels < 0:
            raise ValueError(f"DiTConfig.concat_channels must be an integer >= 0, got {self.concat_channels!r}")
        for name in ("out_channels", "num_classes", "context_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"DiTConfig.{name} must be None or an integer >= 1, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"DiTConfig.hidden={self.hidden} not divisible by heads={self.heads}")
        if self.hidden % 4:
            raise ValueError(f"DiTConfig.hidden must be a multiple of 4 (2-D sin-cos embedding), got {self.hidden}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not (isinstance(self.time_scale, (int, float)) and math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"DiTConfig.time_scale must be a finite number > 0, got {self.time_scale!r}")
        if not isinstance(self.second_time, bool):
            raise ValueError(f"DiTConfig.second_time must be true or false, got {self.second_time!r}")


#: Table 1 of Peebles & Xie 2023 (S, B, L, XL) and tiny CPU sizes (T), each at patch 2, 4 and 8.
DIT_SIZES: dict[str, dict[str, int]] = {
    f"DiT-{size}/{patch}": dict(hidden=hidden, depth=depth, heads=heads, patch=patch)
    for size, (hidden, depth, heads) in {
        "T": (192, 6, 3), "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16),
    }.items()
    for patch in (2, 4, 8)
}


def dit_config(size: str, **overrides: Any) -> DiTConfig:
    """The :class:`DiTConfig` of a named size (``"DiT-S/2"``, ...; see :data:`DIT_SIZES`) with overrides."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; allowed: {', '.join(DIT_SIZES)}")
    return replace(DiTConfig(**DIT_SIZES[size]), **overrides)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """``(grid_h * grid_w, dim)`` fixed 2-D sin-cos positional embedding, row-major, float64.

    Half the channels encode the row, half the column, each as Vaswani et al. 2017's 1-D embedding
    with frequencies ``10000^(-k / (dim/4))`` (the MAE/DiT construction).
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(grid_h, dtype=torch.float64)[:, None] * omega        # (gh, dim/4)
    cols = torch.arange(grid_w, dtype=torch.float64)[:, None] * omega        # (gw, dim/4)
    emb_h = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(grid_h, grid_w, 2 * quarter)
    emb_w = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(grid_h, grid_w, 2 * quarter)
    return torch.cat([emb_h, emb_w], dim=2).reshape(grid_h * grid_w, dim)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` with per-sample ``(B, D)`` vectors over tokens ``(B, N, D)``."""
    return torch.addcmul(shift[:, None], x, scale[:, None] + 1)


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Fig. 3)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, context_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.cross = None
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(hidden, eps=1e-6)
            self.cross = Attention(hidden, heads, context_dim=context_dim, zero_out=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden))
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)   # (B, D) each
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None and context is not None:
            x = x + self.cross(self.cross_norm(x), context, mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """DiT ``net(x (B, C, H, W), time (B,) or scalar, cond=None) -> (B, C_out, H, W)``."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = DiTConfig(**overrides)
        elif overrides:
            raise ValueError("give a DiTConfig or keyword overrides, not both")
        self.config = c = config
        self.out_channels = c.out_channels or c.in_channels
        self.patch_embed = nn.Conv2d(c.in_channels + c.concat_channels, c.hidden, c.patch, stride=c.patch)
        self.time_embed = TimestepEmbedding(c.hidden, freq_dim=256, time_scale=c.time_scale)
        self.label_embed = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(c.hidden, c.heads, c.mlp_ratio, c.context_dim) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(c.hidden, 2 * c.hidden)
        self.linear_out = nn.Linear(c.hidden, c.patch * c.patch * self.out_channels)
        self.second_time_embed = TimestepEmbedding(c.hidden, freq_dim=256, time_scale=c.time_scale) \
            if c.second_time else None
        self._pos_cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}
        self._init_weights()

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> DiT:
        """A DiT of a named size, e.g. ``DiT.from_size("DiT-T/2", in_channels=1, num_classes=10)``."""
        return cls(dit_config(size, **overrides))

    def _init_weights(self) -> None:
        # As in DiT: Xavier-uniform linears, the patch embedding like a linear, label embedding N(0, 0.02),
        # time MLP N(0, 0.02); adaLN modulation and the output layer zero ("adaLN-Zero").
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        for embed in (self.time_embed, self.second_time_embed):
            for layer in (embed.mlp[0], embed.mlp[2]) if embed is not None else ():
                nn.init.normal_(layer.weight, std=0.02)
        zero = [self.ada_out, self.linear_out] + [block.ada for block in self.blocks]
        zero += [block.cross.proj for block in self.blocks if block.cross is not None]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def pos_embed(self, grid_h: int, grid_w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(1, grid_h * grid_w, hidden)`` positional embedding for this grid (cached per grid)."""
        key = (grid_h, grid_w, device, dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_2d(self.config.hidden, grid_h, grid_w).to(device, dtype)[None]
        return self._pos_cache[key]

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None, *,
                second_time: Tensor | float | None = None) -> Tensor:
        c = self.config
        check_divisible(x, c.in_channels, c.patch, f"DiT with patch size {c.patch}")
        info = parse_conditioning(cond, x, num_classes=c.num_classes, context_dim=c.context_dim,
                                  concat_channels=c.concat_channels)
        emb = embed_times(self.time_embed, self.second_time_embed, time, second_time, x)
        if self.label_embed is not None:
            emb = emb + self.label_embed(info.labels)
        emb = F.silu(emb)  # every adaLN regression starts with SiLU: apply it once
        if info.concat is not None:
            x = torch.cat([x, info.concat], dim=1)

        b, _, height, width = x.shape
        gh, gw, p = height // c.patch, width // c.patch, c.patch
        h = self.patch_embed(x).flatten(2).transpose(1, 2)                  # (B, N, D), row-major
        h = h + self.pos_embed(gh, gw, x.device, h.dtype)
        for block in self.blocks:
            h = block(h, emb, info.context, info.context_mask)
        shift, scale = self.ada_out(emb).chunk(2, dim=1)
        h = self.linear_out(modulate(self.norm_out(h), shift, scale))          # (B, N, p*p*C)
        # unpatchify: (B, gh, gw, p, p, C) -> (B, C, gh, p, gw, p) -> (B, C, H, W)
        h = h.view(b, gh, gw, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, self.out_channels, height, width)
