"""A residual MLP denoiser network for low-dimensional data: ``net(x, time, cond=None) -> (B, D)``.

The network is time-convention agnostic: a :class:`~denoisekit.prediction.Denoiser` may give it
``t`` in [0, 1], a discrete step index 0..999, or EDM's ``c_noise = log(sigma) / 4`` (about -2..1.2).
The time enters through Fourier features ``sin(f s), cos(f s)`` of ``s = time_scale * time`` with
frequencies ``f`` log-spaced over [1e-3, 1e3]: whatever the range of ``s`` (about 1 to 1000), the
lowest frequencies stay below one period across it, so no two times share an embedding, and the
highest resolve differences of 1e-3 (the sinusoidal embedding of Vaswani et al. 2017 with a wider
band, as Fourier features of Tancik et al. 2020). ``time_scale`` rescales an unusual time range.

Each residual block is ``h + W2 SiLU(W1 LN(h) + E(emb))`` (a pre-norm MLP block; the
time/label embedding is added inside, as in Ho et al. 2020's ResBlocks). Normalisation sits only on
the residual branches, so the stream ``x -> h -> out`` stays linear: at high noise an eps-model must
output ``eps ~ x`` for points far out in the prior's tail, and a final LayerNorm would bound that
output (and blow up ``x0 = (x - sigma eps) / alpha`` there). The output layer starts at zero.

Class conditioning (``num_classes``): ``cond`` is a ``(B,)`` integer tensor of labels (or
``{"labels": ...}``); ``-1`` or ``num_classes`` is the null label classifier-free guidance trains
with (Ho & Salimans 2022). Time embedding and label parsing are the shared ones of
:mod:`denoisekit.models.layers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .layers import TimestepEmbedding, as_time, parse_conditioning

@dataclass(frozen=True)
class MLPConfig:
    """Shape of an :class:`MLP`. ``depth`` residual blocks of width ``hidden``; ``emb_dim`` Fourier
    features (half sines, half cosines); ``num_classes`` adds a label embedding (+ a null label)."""

    dim: int = 2
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 64
    num_classes: int | None = None
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "depth", "emb_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPConfig.{name} must be an integer >= 1, got {value!r}")
        if self.emb_dim % 2:
            raise ValueError(f"MLPConfig.emb_dim must be even (sines and cosines), got {self.emb_dim}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"MLPConfig.num_classes must be None or an integer >= 1, got {self.num_classes!r}")
        if not (isinstance(self.time_scale, (int, float)) and math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"MLPConfig.time_scale must be a finite number > 0, got {self.time_scale!r}")


class ResidualBlock(nn.Module):
    """``h + W2 SiLU(W1 LN(h) + E emb)``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb)))


class MLP(nn.Module):
    """Residual MLP ``net(x (B, D), time (B,) or scalar, cond (B,) labels or None) -> (B, D)``."""

    config_class = MLPConfig

    def __init__(self, config: MLPConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = MLPConfig(**overrides)
        elif overrides:
            raise ValueError("give an MLPConfig or keyword overrides, not both")
        self.config = c = config
        self.time_embed = TimestepEmbedding(c.hidden, c.emb_dim, c.time_scale)
        # Row num_classes is the null label (unconditional), trained by label dropout for CFG.
        self.label_embed = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        self.inp = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(c.hidden) for _ in range(c.depth))
        self.out = nn.Linear(c.hidden, c.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLP expects inputs of shape (B, {self.config.dim}), got {tuple(x.shape)}")
        labels = parse_conditioning(cond, x, num_classes=self.config.num_classes).labels
        emb = self.time_embed(as_time(time, x)).to(x.dtype)
        if self.label_embed is not None:
            emb = emb + self.label_embed(labels)
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
