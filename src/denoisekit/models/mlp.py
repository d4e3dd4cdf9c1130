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

:class:`TimeLinearMLP` (``"timelinear"``, the 2-D default of ``train2d``) is the network of KAIST CS492D's 2-D
assignments ("SimpleNet"): ``depth`` hidden layers and an output layer, each a *TimeLinear*
``(W h + b) * g_l(t)`` whose gain ``g_l`` is the layer's own ``Linear, SiLU, Linear`` of the sinusoidal
features of the time, with ReLU between layers and no normalisation or skip. Its default frequencies are the
course's, ``10000^(-k / (emb_dim / 2))`` (Vaswani et al. 2017's band, ``freq_min`` .. ``freq_max`` =
1e-4 .. 1): smooth in a step index 0..999, so the fractional indices a solver's grid asks for lie between
trained ones, where :class:`MLP`'s band up to 1e3 wraps within one index step. At the course's budget it is
the network that meets the course's Chamfer thresholds (``benchmarks/course.py``; ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .layers import TimestepEmbedding, as_time, embed_times, fourier_features, parse_conditioning


def _check_shape_fields(config: Any) -> None:
    """The checks :class:`MLPConfig` and :class:`TimeLinearConfig` share, naming the class and field."""
    name = type(config).__name__
    for field in ("dim", "hidden", "depth", "emb_dim"):
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field} must be an integer >= 1, got {value!r}")
    if config.emb_dim % 2:
        raise ValueError(f"{name}.emb_dim must be even (sines and cosines), got {config.emb_dim}")
    if config.num_classes is not None and (not isinstance(config.num_classes, int) or config.num_classes < 1):
        raise ValueError(f"{name}.num_classes must be None or an integer >= 1, got {config.num_classes!r}")
    if not (isinstance(config.time_scale, (int, float)) and math.isfinite(config.time_scale)
            and config.time_scale > 0):
        raise ValueError(f"{name}.time_scale must be a finite number > 0, got {config.time_scale!r}")


@dataclass(frozen=True)
class MLPConfig:
    """Shape of an :class:`MLP`. ``depth`` residual blocks of width ``hidden``; ``emb_dim`` Fourier
    features (half sines, half cosines); ``num_classes`` adds a label embedding (+ a null label);
    ``second_time`` a second time input (MeanFlow's interval ``t - r``;
    :func:`~denoisekit.models.layers.embed_times`)."""

    dim: int = 2
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 64
    num_classes: int | None = None
    time_scale: float = 1.0
    second_time: bool = False

    def __post_init__(self) -> None:
        _check_shape_fields(self)
        if not isinstance(self.second_time, bool):
            raise ValueError(f"MLPConfig.second_time must be true or false, got {self.second_time!r}")


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
        # last, so that every other weight is the plain network's at the same seed
        self.second_time_embed = TimestepEmbedding(c.hidden, c.emb_dim, c.time_scale) if c.second_time else None

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None, *,
                second_time: Tensor | float | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLP expects inputs of shape (B, {self.config.dim}), got {tuple(x.shape)}")
        labels = parse_conditioning(cond, x, num_classes=self.config.num_classes).labels
        emb = embed_times(self.time_embed, self.second_time_embed, time, second_time, x)
        if self.label_embed is not None:
            emb = emb + self.label_embed(labels)
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


@dataclass(frozen=True)
class TimeLinearConfig:
    """Shape of a :class:`TimeLinearMLP`: ``depth`` hidden TimeLinear layers of width ``hidden`` and a
    TimeLinear output layer; ``emb_dim`` sinusoidal features of ``time_scale * time`` at frequencies log-spaced
    over ``[freq_min, freq_max]``; ``num_classes`` adds a label embedding (+ a null label) to the features."""

    dim: int = 2
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 256
    num_classes: int | None = None
    time_scale: float = 1.0
    freq_min: float = 1e-4
    freq_max: float = 1.0

    def __post_init__(self) -> None:
        _check_shape_fields(self)
        lo, hi = self.freq_min, self.freq_max
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi)) or not 0 < lo < hi:
            raise ValueError(f"TimeLinearConfig needs 0 < freq_min < freq_max (finite), got {lo!r}, {hi!r}")


class TimeLinear(nn.Module):
    """``(W h + b) * g(e)``: a linear layer whose outputs are scaled by a gain computed from the (time,
    label) features ``e`` by its own ``Linear, SiLU, Linear``."""

    def __init__(self, dim_in: int, dim_out: int, emb_dim: int):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.gain = nn.Sequential(nn.Linear(emb_dim, dim_out), nn.SiLU(), nn.Linear(dim_out, dim_out))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.fc(h) * self.gain(emb)


class TimeLinearMLP(nn.Module):
    """CS492D's "SimpleNet" ``net(x (B, D), time (B,) or scalar, cond (B,) labels or None) -> (B, D)``
    (see the module docstring)."""

    config_class = TimeLinearConfig

    def __init__(self, config: TimeLinearConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = TimeLinearConfig(**overrides)
        elif overrides:
            raise ValueError("give a TimeLinearConfig or keyword overrides, not both")
        self.config = c = config
        self.label_embed = nn.Embedding(c.num_classes + 1, c.emb_dim) if c.num_classes else None
        widths = [c.dim] + [c.hidden] * c.depth + [c.dim]
        self.layers = nn.ModuleList(TimeLinear(a, b, c.emb_dim) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None) -> Tensor:
        c = self.config
        if x.ndim != 2 or x.shape[1] != c.dim:
            raise ValueError(f"TimeLinearMLP expects inputs of shape (B, {c.dim}), got {tuple(x.shape)}")
        labels = parse_conditioning(cond, x, num_classes=c.num_classes).labels
        emb = fourier_features(as_time(time, x), c.emb_dim, c.time_scale, (c.freq_min, c.freq_max)).to(x.dtype)
        if self.label_embed is not None:
            emb = emb + self.label_embed(labels)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, emb)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h
