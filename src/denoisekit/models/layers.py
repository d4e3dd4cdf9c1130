"""Building blocks shared by the image backbones: time embedding, conditioning inputs, attention.

Network call convention (what :class:`~denoisekit.prediction.Denoiser` calls)::

    net(x (B, C, H, W), time (B,) or scalar)            -> (B, C_out, H, W)
    net(x, time, cond)                                   cond: None | labels (B,) | dict

``time`` may be t in [0, 1], a discrete step index 0..999 or EDM's ``c_noise = log(sigma) / 4``:
:class:`TimestepEmbedding` uses log-spaced frequencies over [1e-3, 1e3] (times ``time_scale``), so
every one of these ranges is resolved by some frequencies and wrapped by none of the low ones.

``cond`` is parsed once, by :func:`parse_conditioning`, into a :class:`Conditioning`. Its keys are the
network keys of :mod:`denoisekit.condition` (``COND_KEYS``):

=================  ==========================  =================================================
key                shape                       meaning
=================  ==========================  =================================================
``labels``         (B,) integer                class; ``-1`` or ``num_classes`` = null label (CFG)
``context``        (B, L, D_ctx) float         token embeddings for cross-attention (text)
``context_mask``   (B, L) bool (or 0/1)        True = real token; False tokens are ignored
``concat``         (B, C_extra, H, W) float    extra input channels (Palette-style image cond.)
``embedding``      (B, [L,] D_ctx) float       vectors or tokens, appended to the context tokens
=================  ==========================  =================================================

A bare integer tensor is ``{"labels": cond}``. Missing ``labels`` on a class-conditional model means
the null label; missing ``context`` (or a row whose tokens are all masked) means cross-attention adds
nothing for that sample. An ``embedding`` is read as ``L`` more context tokens (``L = 1`` for a vector),
always attended. Missing ``concat`` on a model built with ``concat_channels > 0`` is an error:
there is no natural "null image", so a silent zero would hide a bug (pass zeros explicitly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..condition import NETWORK_KEYS
from ..engine.stream import sample_generators

#: Range of the log-spaced frequencies applied to ``time_scale * time`` (as in ``models/mlp.py``).
FREQ_RANGE = (1e-3, 1e3)
COND_KEYS = NETWORK_KEYS


# ----------------------------------------------------------------------------------------------
# Dropout


class SampleDropout(nn.Dropout):
    """Dropout (Srivastava et al. 2014) whose mask for sample ``i`` comes from that sample's generator while
    the training engine runs a step, so a step's masks depend only on (seed, step, sample index): gradient
    accumulation and the number of processes change nothing. Elsewhere (or for a batch that is not the
    step's samples) it is ``nn.Dropout``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        gens = sample_generators()
        if gens is None or len(gens) != x.shape[0]:
            return super().forward(x)
        keep = torch.stack([torch.rand(x.shape[1:], generator=g) for g in gens]).to(x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


# ----------------------------------------------------------------------------------------------
# Time


def fourier_features(time: Tensor, dim: int, scale: float = 1.0,
                     freq_range: tuple[float, float] = FREQ_RANGE) -> Tensor:
    """``(B,) -> (B, dim)`` features ``[sin(f_k s), cos(f_k s)]`` of ``s = scale * time``, float64.

    The sinusoidal embedding of Vaswani et al. 2017 (used for diffusion time by Ho et al. 2020) with
    frequencies log-spaced over ``freq_range`` instead of ``[1e-4, 1]``, so that t in [0, 1] is
    resolved as finely as a step index 0..999. Angles in float64: a step index times 1e3 would lose
    its fractional part in float32.
    """
    lo, hi = freq_range
    freqs = torch.exp(torch.linspace(math.log(lo), math.log(hi), dim // 2, dtype=torch.float64,
                                     device=time.device))
    angles = (time.to(torch.float64).reshape(-1, 1) * scale) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TimestepEmbedding(nn.Module):
    """``time (B,) -> (B, dim)``: Fourier features, then ``Linear, SiLU, Linear`` (Ho et al. 2020)."""

    def __init__(self, dim: int, freq_dim: int = 256, time_scale: float = 1.0):
        super().__init__()
        if freq_dim % 2:
            raise ValueError(f"freq_dim must be even (sines and cosines), got {freq_dim}")
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, time: Tensor) -> Tensor:
        features = fourier_features(time, self.freq_dim, self.time_scale)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def as_time(time: Tensor | float, x: Tensor) -> Tensor:
    """A ``(B,)`` time tensor from a scalar or ``(B,)`` input (any float convention, or integers)."""
    time = torch.as_tensor(time, device=x.device)
    if time.ndim == 0:
        return time.expand(x.shape[0])
    if time.numel() != x.shape[0]:
        raise ValueError(f"expected a scalar or ({x.shape[0]},) time, got shape {tuple(time.shape)}")
    return time.reshape(-1)


def embed_times(time_embed: TimestepEmbedding, second_embed: TimestepEmbedding | None, time: Tensor | float,
                second_time: Tensor | float | None, x: Tensor) -> Tensor:
    """``(B, dim)`` embedding of a network's time, plus that of its second time input when it has one.

    A network built with ``second_time=True`` has a second :class:`TimestepEmbedding` whose output is added to the
    first: MeanFlow's ``(t, t - r)`` (Geng et al. 2025, Sec. 4: the interval as the second input). A missing
    ``second_time`` is 0 (``r = t``: the network's instantaneous velocity, an ordinary denoiser). A network built
    without one (``second_embed=None``) computes exactly what it always did and refuses a ``second_time``.
    """
    emb = time_embed(as_time(time, x))
    if second_embed is not None:
        emb = emb + second_embed(as_time(0.0 if second_time is None else second_time, x))
    elif second_time is not None:
        raise ValueError("this network has no second time input (built with second_time=False) but got one: "
                         "a MeanFlow run's network needs model.second_time: true")
    return emb.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Conditioning


@dataclass(frozen=True)
class Conditioning:
    """Validated conditioning for one batch (see the module docstring); absent parts are None."""

    labels: Tensor | None = None        # (B,) long, null label mapped to num_classes
    context: Tensor | None = None       # (B, L, D_ctx), x's dtype
    context_mask: Tensor | None = None  # (B, L) bool, True = attend
    concat: Tensor | None = None        # (B, C_extra, H, W), x's dtype


def parse_conditioning(cond: Any, x: Tensor, *, num_classes: int | None = None,
                       context_dim: int | None = None, concat_channels: int = 0) -> Conditioning:
    """Check ``cond`` against what a model accepts and return a :class:`Conditioning`.

    Raises ``ValueError`` naming the expected shape or range for anything the model cannot use
    (labels for an unconditional model, out-of-range labels, context of the wrong width, ...).
    """
    b = x.shape[0]
    if cond is None:
        parts: dict[str, Any] = {}
    elif isinstance(cond, dict):
        unknown = set(cond) - set(COND_KEYS)
        if unknown:
            raise ValueError(f"unknown conditioning keys {sorted(unknown)}; allowed: {', '.join(COND_KEYS)}")
        parts = {k: v for k, v in cond.items() if v is not None}
    else:
        parts = {"labels": cond}

    labels = None
    if num_classes is not None:
        labels = _labels(parts.get("labels"), b, num_classes, x.device)
    elif "labels" in parts:
        raise ValueError("this model is not class-conditional (num_classes=None) but got class labels")

    context = mask = None
    if "context" in parts:
        if context_dim is None:
            raise ValueError("this model has no cross-attention (context_dim=None) but got a context")
        context = torch.as_tensor(parts["context"], device=x.device).to(x.dtype)
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != context_dim:
            raise ValueError(f"context must have shape ({b}, L, {context_dim}), got {tuple(context.shape)}")
        if context.shape[1] == 0:  # no tokens: nothing to attend to, as with no context
            context = None
        elif "context_mask" in parts:
            mask = torch.as_tensor(parts["context_mask"], device=x.device)
            if mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must have shape {tuple(context.shape[:2])}, got {tuple(mask.shape)}")
            if mask.dtype.is_floating_point:
                raise ValueError(f"context_mask must be bool or 0/1 integers, got dtype {mask.dtype}")
            mask = mask.bool()
    elif "context_mask" in parts:
        raise ValueError("got a context_mask without a context")
    if "embedding" in parts:
        tokens = _embedding(parts["embedding"], x, context_dim)
        if context is not None and mask is not None:
            mask = torch.cat([mask, mask.new_ones(tokens.shape[:2])], 1)
        context = tokens if context is None else torch.cat([context, tokens], 1)

    return Conditioning(labels, context, mask, _concat(parts, x, concat_channels))


def _embedding(value: Any, x: Tensor, context_dim: int | None) -> Tensor:
    """``(B, D)`` vectors or ``(B, L, D)`` sequences as ``(B, L, D)`` context tokens (``L = 1`` for vectors)."""
    if context_dim is None:
        raise ValueError("this model has no cross-attention (context_dim=None) but got an embedding")
    tokens = torch.as_tensor(value, device=x.device).to(x.dtype)
    tokens = tokens[:, None] if tokens.ndim == 2 else tokens
    if tokens.ndim != 3 or tokens.shape[0] != x.shape[0] or tokens.shape[2] != context_dim or not tokens.shape[1]:
        raise ValueError(f"cond['embedding'] must have shape ({x.shape[0]}, {context_dim}) or ({x.shape[0]}, L, "
                         f"{context_dim}) (model.context_dim={context_dim}), got {tuple(torch.as_tensor(value).shape)}")
    return tokens


def _concat(parts: dict[str, Any], x: Tensor, channels: int) -> Tensor | None:
    if not channels:
        if "concat" in parts:
            raise ValueError("this model has no extra input channels (concat_channels=0) but got cond['concat']")
        return None
    expected = (x.shape[0], channels, *x.shape[2:])
    if "concat" not in parts:
        raise ValueError(f"this model needs cond['concat'] of shape {expected} (extra input channels); "
                         "pass zeros for none")
    concat = torch.as_tensor(parts["concat"], device=x.device).to(x.dtype)
    if tuple(concat.shape) != expected:
        raise ValueError(f"cond['concat'] must have shape {expected}, got {tuple(concat.shape)}")
    return concat


def _labels(y: Any, batch: int, num_classes: int, device: torch.device) -> Tensor:
    """``(B,)`` label indices with ``-1`` and ``None`` (no labels) mapped to the null label."""
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got dtype {y.dtype}")
    y = y.long().expand(batch) if y.ndim == 0 else y.long()
    if y.shape != (batch,):
        raise ValueError(f"expected ({batch},) class labels, got shape {tuple(y.shape)}")
    if ((y < -1) | (y > num_classes)).any():
        bad = sorted(set(y[(y < -1) | (y > num_classes)].tolist()))
        raise ValueError(f"class labels must be in 0..{num_classes - 1} ({num_classes} or -1: null label), got {bad}")
    return torch.where(y < 0, torch.full_like(y, num_classes), y)


def check_divisible(x: Tensor, channels: int, divisor: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, channels, H, W)`` with ``H, W`` divisible by ``divisor``."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{model} expects inputs of shape (B, {channels}, H, W), got {tuple(x.shape)}")
    h, w = x.shape[2:]
    if h % divisor or w % divisor or h == 0 or w == 0:
        raise ValueError(f"{model} needs H and W divisible by {divisor}, got {h}x{w}")


# ----------------------------------------------------------------------------------------------
# Attention


class Attention(nn.Module):
    """Multi-head attention over tokens ``(B, N, dim)``: self-attention, or cross-attention to a
    ``context (B, L, context_dim)`` with a key mask (Vaswani et al. 2017; cross-attention to text
    tokens as in Rombach et al. 2022). Uses ``F.scaled_dot_product_attention``.

    With a mask, a sample whose tokens are all masked gets a zero output (it attends to nothing),
    the same as calling the block without a context.

    ``control``: None, or a hook ``probs (B, h, N, L) -> probs`` that sees and may change the attention
    probabilities before they weigh the values (prompt-to-prompt, Hertz et al. 2023); it is set for the
    duration of a call by :func:`denoisekit.models.attention_control.attention_control`, which names the layer.
    """

    control: Callable[[Tensor], Tensor] | None = None

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, zero_out: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.cross = heads, context_dim is not None
        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if zero_out:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        h = self.heads
        valid = None
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self.q(x).view(b, n, h, d // h).transpose(1, 2)                 # (B, h, N, d_h)
            k, v = self.kv(context).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
            if mask is not None:
                valid = mask.any(dim=1)
                # a fully masked row would give NaN: let it see all tokens, then zero its output
                mask = (mask | ~valid[:, None])[:, None, None, :]                # (B, 1, 1, L)
        else:
            q, k, v = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.control is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # the same attention with its probabilities (B, h, N, L) in the open for the hook
            scores = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
            probs = (scores if mask is None else scores.masked_fill(~mask, float("-inf"))).softmax(-1)
            out = self.control(probs) @ v
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        if valid is not None and not bool(valid.all()):
            out = out * valid[:, None, None].to(out.dtype)
        return out
