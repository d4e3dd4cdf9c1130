"""Small shared helpers: argument checks, broadcasting, seeded noise. Used everywhere, defined once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Mapping, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

#: A generator, one generator per sample (results independent of batch size), or None.
GeneratorLike = torch.Generator | Sequence[torch.Generator] | None


def check_choice(kind: str, value: str, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise ``ValueError`` listing them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(sorted(allowed))}")
    return value


def lookup(kind: str, registry: Mapping[str, T], name: str) -> T:
    """``registry[name]`` with a ``ValueError`` naming the allowed keys when ``name`` is unknown."""
    check_choice(kind, name, registry.keys())
    return registry[name]


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-sample ``(B,)`` tensor broadcasts against ``(B, ...)``."""
    extra = ndim - x.ndim
    if extra < 0:
        raise ValueError(f"tensor has {x.ndim} dims, more than the target {ndim}")
    return x[(...,) + (None,) * extra]


def as_batch(value: Tensor | float, x: Tensor) -> Tensor:
    """A per-sample ``(B,)`` tensor (float64) from a scalar or a ``(B,)`` tensor, on ``x``'s device."""
    v = torch.as_tensor(value, dtype=torch.float64, device=x.device)
    if v.ndim == 0:
        v = v.expand(x.shape[0])
    if v.shape != (x.shape[0],):
        raise ValueError(f"expected a scalar or a ({x.shape[0]},) tensor of noise levels, got shape {tuple(v.shape)}")
    return v


def randn(shape: Sequence[int], generator: GeneratorLike = None, *, device: Any = None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise. With a list of generators, sample ``i`` uses generator ``i``, so a sample
    does not change when the batch around it does (the way diffusers' pipelines accept a list)."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
        return out.to(device) if device is not None else out
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype) for g in gens]
    out = torch.stack(rows)
    return out.to(device) if device is not None else out


def randn_like(x: Tensor, generator: GeneratorLike = None) -> Tensor:
    """:func:`randn` with ``x``'s shape, dtype and device."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def seeded_generators(seed: int, n: int, device: Any = "cpu") -> list[torch.Generator]:
    """One generator per sample, seeded ``seed, seed+1, ...``: sample ``i`` is the same in any batch."""
    return [torch.Generator(device).manual_seed(seed + i) for i in range(n)]
