"""Metrics for low-dimensional samples: sliced and exact 2-Wasserstein distances, and model NLL.

- :func:`sliced_wasserstein`: ``SW_2(P, Q)^2 = E_theta W_2^2(theta^T P, theta^T Q)`` over uniform
  directions ``theta`` (Rabin et al. 2011; Bonneel et al. 2015), Monte Carlo over seeded directions;
  each 1-D distance is exact from sorted projections.
- :func:`wasserstein2`: the exact 2-Wasserstein distance between two equal-size empirical measures,
  an optimal assignment on squared distances (Kuhn's Hungarian problem, solved by scipy).
- :func:`chamfer_distance`: the sum over each cloud of every point's squared distance to the nearest point
  of the other, as KAIST CS492D grades 2048 samples against 2048 data points (a sum, so it grows with the
  number of points; squared, the only reading under which the course's thresholds of 20 and 40 lie above
  the data-vs-data floor: 1.4 for the course's Swiss roll, against 64 for a sum of plain distances).
- :func:`model_nll`: negative log-likelihood in nats of points under a model's probability-flow
  ODE (Song et al. 2021b, App. D.2), through :func:`denoisekit.eval.likelihood.nll`.

For a translation by ``v``: ``W2 = |v|`` and, in ``D`` dimensions, ``SW_2 = |v| / sqrt(D)``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from .likelihood import nll


def _points(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) point cloud, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _quantiles(sorted_proj: Tensor, m: int) -> Tensor:
    """Empirical quantiles at ``(i + 1/2) / m`` of each column of sorted projections ``(N, P)``."""
    n = sorted_proj.shape[0]
    if n == m:
        return sorted_proj
    idx = ((torch.arange(m, dtype=torch.float64) + 0.5) * n / m).floor().long().clamp_max(n - 1)
    return sorted_proj[idx]


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 1000, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between point clouds ``(N, D)`` and ``(M, D)``.

    Exact per direction for ``N == M`` (sorted projections matched in order); for ``N != M`` the
    1-D quantile functions are compared at ``max(N, M)`` levels. The directions come from ``seed``.
    """
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point clouds differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    m = max(x.shape[0], y.shape[0])
    px = _quantiles(torch.sort(x @ theta, dim=0).values, m)
    py = _quantiles(torch.sort(y @ theta, dim=0).values, m)
    return math.sqrt(float((px - py).pow(2).mean()))


def wasserstein2(x: Tensor, y: Tensor, max_points: int = 2000, seed: int = 0) -> float:
    """Exact 2-Wasserstein distance ``sqrt(min_pi mean |x_i - y_pi(i)|^2)`` between point clouds.

    Both clouds are subsampled (seeded) to ``min(N, M, max_points)`` points, since the assignment
    costs ``O(n^3)``: 2000 points take about a second.
    """
    from scipy.optimize import linear_sum_assignment

    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point clouds differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    n = min(x.shape[0], y.shape[0], max_points)
    g = torch.Generator().manual_seed(seed)
    if x.shape[0] > n:
        x = x[torch.randperm(x.shape[0], generator=g)[:n]]
    if y.shape[0] > n:
        y = y[torch.randperm(y.shape[0], generator=g)[:n]]
    cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(max(float(cost[rows, cols].mean()), 0.0))


def chamfer_distance(x: Tensor, y: Tensor, chunk: int = 4096) -> float:
    """``sum_i min_j |x_i - y_j|^2 + sum_j min_i |x_i - y_j|^2`` (module docstring), in chunks of ``chunk``
    rows so large clouds need no ``N x M`` matrix at once."""
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point clouds differ in dimension: {x.shape[1]} vs {y.shape[1]}")

    def nearest(a: Tensor, b: Tensor) -> float:
        return sum(float(torch.cdist(a[i:i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
                         .pow(2).sum()) for i in range(0, a.shape[0], chunk))

    return nearest(x, y) + nearest(y, x)


def model_nll(denoiser: Any, x: Tensor, *, sigma_min: float | None = None, sigma_max: float | None = None,
              cond: Any = None, rtol: float = 1e-5, atol: float = 1e-5, batch: int = 500) -> Tensor:
    """NLL in nats ``(N,)`` of points ``x`` ``(N, D)`` under a :class:`~denoisekit.prediction.Denoiser`.

    ``-log p_{sigma_min}(x)`` with the process's own ``sigma_min``/``sigma_max`` and prior unless
    given. The network runs in float64 (a copy), so the adaptive solver meets its tolerance.
    """
    process = denoiser.process
    lo = process.sigma_min if sigma_min is None else sigma_min
    hi = process.sigma_max if sigma_max is None else sigma_max
    model = copy.deepcopy(denoiser).double().eval()
    x = _points(x, "x")
    out = [nll(model, x[i:i + batch], sigma_min=lo, sigma_max=hi, process=process, cond=cond, rtol=rtol, atol=atol)
           for i in range(0, x.shape[0], batch)]
    return torch.cat(out)
