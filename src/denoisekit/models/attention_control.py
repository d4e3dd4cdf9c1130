"""Attention control: a controller sees (and may change) the attention probabilities of every layer of a network.

Prompt-to-prompt editing (Hertz et al. 2023, Sec. 3) works by reading the cross-attention maps of one
generation and writing them into another. :class:`~denoisekit.models.layers.Attention` has a ``control``
hook for that; :func:`attention_control` sets it on every attention layer of a network for the duration of
a ``with`` block, bound to the layer's name, and clears it after, so the network is unchanged outside::

    with attention_control(denoiser, controller):
        x0 = denoiser(y, sigma, cond)        # every layer calls controller(probs, layer=..., cross=...)

A controller is any callable ``controller(probs (B, heads, N, L), *, layer: str, cross: bool) -> probs``:
``N`` the query positions (``H * W`` of the layer's feature map), ``L`` the keys (context tokens for
cross-attention, positions for self-attention). Returning ``probs`` unchanged computes exactly the
uncontrolled attention (up to float rounding: the hook needs the probabilities, which the fused kernel
does not expose).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Protocol

from torch import Tensor, nn

from .layers import Attention


class AttentionController(Protocol):
    """``controller(probs (B, heads, N, L), *, layer, cross) -> probs (B, heads, N, L)``."""

    def __call__(self, probs: Tensor, *, layer: str, cross: bool) -> Tensor: ...


def attention_layers(net: nn.Module) -> list[tuple[str, Attention]]:
    """``(name, layer)`` of every attention layer of ``net`` (self and cross), in module order."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, Attention)]


@contextlib.contextmanager
def attention_control(net: nn.Module, controller: AttentionController) -> Iterator[None]:
    """Within the block, every attention layer of ``net`` passes its probabilities through ``controller``
    (module docstring). ``ValueError`` when ``net`` has no attention layer or is already controlled."""
    layers = attention_layers(net)
    if not layers:
        raise ValueError(f"{type(net).__name__} has no attention layers to control")
    if any(m.control is not None for _, m in layers):
        raise ValueError("this network is already under attention control (nested attention_control blocks)")
    for name, m in layers:
        m.control = functools.partial(controller, layer=name, cross=m.cross)
    try:
        yield
    finally:
        for _, m in layers:
            m.control = None
