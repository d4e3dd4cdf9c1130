"""A tiny differentiable 3-D scene: a voxel grid of density and colour, volume-rendered from azimuths.

DreamFusion's loop (Poole et al. 2023) at toy scale: where they optimise a NeRF, this optimises a ``G^3`` grid
(Plenoxels-style, Fridovich-Keil et al. 2022) read by trilinear interpolation, rendered orthographically by the
emission-absorption quadrature of Max 1995 / NeRF (Mildenhall et al. 2020, eq. 3):

    C(r) = sum_i T_i (1 - exp(-s_i delta)) c_i + T_N c_bg,     T_i = exp(-sum_{j<i} s_j delta)

over ``samples`` equally spaced points along each ray through the cube ``[-1, 1]^3``. Density is
``softplus(raw)`` (non-negative, smooth), colour ``tanh(raw)`` in ``[-1, 1]``; the background is black
(``-1``), like the shapes data. A camera at azimuth ``a`` and elevation ``e`` sits in direction
``(cos e sin a, sin e, cos e cos a)`` and looks at the origin; its image's right is ``(cos a, 0, -sin a)``.
The silhouette ``1 - T_N`` depends only on the sum of densities along a ray, so opposite views' silhouettes
are mirror images of each other for every volume (a property the tests check).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def camera_rays(azimuth: Tensor, elevation: Tensor, size: int, samples: int) -> Tensor:
    """Sample points ``(B, size, size, samples, 3)`` in ``[-1, 1]^3`` coordinates (x, y, z), front to back,
    of orthographic cameras at ``azimuth``, ``elevation`` (radians, ``(B,)``); pixel rows go downwards."""
    a, e = azimuth.double(), elevation.double()
    c = torch.stack([e.cos() * a.sin(), e.sin(), e.cos() * a.cos()], -1)          # (B, 3) towards the camera
    right = torch.stack([a.cos(), torch.zeros_like(a), -a.sin()], -1)
    up = torch.linalg.cross(right, -c)
    lin = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    u, v = lin[None, :], -lin[:, None]                                             # (1, W), (H, 1)
    # the cube's half-diagonal bounds every ray's chord: sqrt(3) on either side of the image plane
    t = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples * 2 - 1
    t = -t * math.sqrt(3)                                                          # near (camera side) first
    origin = u[..., None] * right[:, None, None] + v[..., None] * up[:, None, None]  # (B, H, W, 3)
    return origin[..., None, :] + t[None, None, None, :, None] * c[:, None, None, None, :]


class VoxelScene(nn.Module):
    """``forward(azimuth (B,), elevation (B,) = 0) -> (B, 3, size, size)`` renders in ``[-1, 1]`` of a
    ``grid^3`` density and colour volume (module docstring). It starts as a soft ball of density (radius
    ``init_radius``) with a small random colour, so that every view has something to move."""

    def __init__(self, grid: int = 16, size: int = 16, *, samples: int | None = None, init_density: float = 4.0,
                 init_radius: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if grid < 2 or size < 2:
            raise ValueError(f"grid and size must be >= 2, got {grid}, {size}")
        self.grid, self.size = int(grid), int(size)
        self.samples = int(samples if samples is not None else 2 * grid)
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2, got {self.samples}")
        lin = torch.linspace(-1, 1, grid)
        z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
        ball = init_density * torch.sigmoid((init_radius - (x**2 + y**2 + z**2).sqrt()) * 10)
        # softplus^-1 of the ball, so the initial density is the ball
        self.density = nn.Parameter(torch.log(torch.expm1(ball.clamp_min(1e-4)))[None])  # (1, D, H, W)
        self.colour = nn.Parameter(0.1 * torch.randn(3, grid, grid, grid, generator=generator))

    def fields(self) -> tuple[Tensor, Tensor]:
        """Density ``(1, G, G, G)`` (>= 0) and colour ``(3, G, G, G)`` in ``[-1, 1]``, indexed ``[z, y, x]``."""
        return F.softplus(self.density), torch.tanh(self.colour)

    def forward(self, azimuth: Tensor, elevation: Tensor | None = None) -> Tensor:
        azimuth = torch.as_tensor(azimuth, dtype=torch.float64).reshape(-1)
        elevation = torch.zeros_like(azimuth) if elevation is None else \
            torch.as_tensor(elevation, dtype=torch.float64).reshape(-1).expand_as(azimuth)
        image, _ = self.render(azimuth, elevation)
        return image

    def render(self, azimuth: Tensor, elevation: Tensor) -> tuple[Tensor, Tensor]:
        """``(image (B, 3, S, S), silhouette (B, 1, S, S))``: the composited colour and ``1 - T_N``."""
        density, colour = self.fields()
        b, s, n = len(azimuth), self.size, self.samples
        pts = camera_rays(azimuth, elevation, s, n).to(density)                    # (B, S, S, N, 3)
        fields = torch.cat([density, colour])[None].expand(b, -1, -1, -1, -1)      # (B, 4, G, G, G)
        # grid_sample reads (x, y, z) -> (W, H, D); outside the cube is empty (zero density)
        vals = F.grid_sample(fields, pts.reshape(b, s, s * n, 1, 3), mode="bilinear",
                             padding_mode="zeros", align_corners=True)             # (B, 4, S, S*N, 1)
        vals = vals.reshape(b, 4, s, s, n)
        delta = 2 * math.sqrt(3) / n
        tau = vals[:, :1] * delta                                                  # (B, 1, S, S, N) optical depths
        depth = torch.cumsum(tau, -1)
        weights = torch.exp(tau - depth) * -torch.expm1(-tau)                      # T_i (1 - exp(-tau_i))
        last = torch.exp(-depth[..., -1])                                          # T_N, through the whole ray
        background = -1.0
        image = (weights * vals[:, 1:]).sum(-1) + last * background
        return image, 1 - last
