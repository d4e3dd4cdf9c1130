"""A differentiable renderer of soft-edged 2-D shapes: the parametric image that score distillation optimises.

Each shape is a signed distance ``d(p)`` (negative inside) of a circle, a square or a five-pointed star,
turned into coverage ``sigmoid(-d / softness)`` and composited front to back over a black background
(the shapes dataset's). Its parameters are unconstrained and mapped by smooth functions, so every value
gives a valid image and gradients are finite: centre ``tanh`` in ``[-1, 1]^2`` (image coordinates),
half-size ``0.05 + 0.6 sigmoid``, colour ``tanh`` in ``[-1, 1]^3``. The kinds are fixed per shape (a discrete
choice gradients cannot make); optimise several shapes and let the loss choose their sizes and colours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .._utils import check_choice

ShapeKind = Literal["circle", "square", "star"]
SHAPE_KINDS = ("circle", "square", "star")


def signed_distance(kind: ShapeKind, p: Tensor, half: Tensor) -> Tensor:
    """``d`` at points ``p (..., 2)`` relative to the centre, for half-sizes ``half`` broadcasting to ``p[..., 0]``."""
    if kind == "circle":
        return p.norm(dim=-1) - half
    if kind == "square":
        return p.abs().amax(-1) - half
    # star: a radius modulated by the angle (5 points, inner radius 0.5 of the outer), a smooth distance proxy
    r, theta = p.norm(dim=-1), torch.atan2(p[..., 1], p[..., 0])
    return r - half * (0.75 + 0.25 * torch.cos(5 * theta + math.pi / 2))


class ShapesRenderer(nn.Module):
    """``forward() -> (B, 3, size, size)`` images in ``[-1, 1]`` of ``len(kinds)`` shapes each (module docstring);
    ``batch`` independent copies (particles) of the parameters, drawn with ``generator``."""

    def __init__(self, kinds: Sequence[str], size: int = 16, *, batch: int = 1, softness: float = 0.04,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not kinds:
            raise ValueError("ShapesRenderer needs at least one shape kind")
        for k in kinds:
            check_choice("shape kind", k, SHAPE_KINDS)
        if size < 2 or softness <= 0:
            raise ValueError(f"size must be >= 2 and softness > 0, got {size}, {softness}")
        self.kinds, self.size, self.softness = tuple(kinds), int(size), float(softness)
        n = len(kinds)
        self.centre = nn.Parameter(0.4 * torch.randn(batch, n, 2, generator=generator))
        self.size_logit = nn.Parameter(0.5 * torch.randn(batch, n, generator=generator))
        self.colour = nn.Parameter(0.5 * torch.randn(batch, n, 3, generator=generator))
        lin = (torch.arange(size) + 0.5) / size * 2 - 1
        self.register_buffer("grid", torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1), persistent=False)

    def forward(self) -> Tensor:
        centre, half = torch.tanh(self.centre), 0.05 + 0.6 * torch.sigmoid(self.size_logit)
        colour = torch.tanh(self.colour)
        b = centre.shape[0]
        image = torch.full((b, 3, self.size, self.size), -1.0, dtype=centre.dtype, device=centre.device)
        for i, kind in enumerate(self.kinds):  # painter's order: later shapes on top
            p = self.grid[None] - centre[:, i, None, None, :]                       # (B, H, W, 2)
            d = signed_distance(kind, p, half[:, i, None, None])
            a = torch.sigmoid(-d / self.softness)[:, None]                           # (B, 1, H, W)
            image = (1 - a) * image + a * colour[:, i, :, None, None]
        return image
