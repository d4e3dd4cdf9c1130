"""Two-dimensional toy distributions: the quickest way to see what a diffusion model learned.

Every dataset is a function ``make_<name>(n, generator) -> (n, 2)`` float32 tensor, deterministic
given the generator, centred and scaled by fixed constants so that the data is roughly zero-mean
with unit scale (the standard deviation every process and loss default assumes is O(1)). Every
dataset's exact density is known (:func:`toy2d_log_prob`), so a model's NLL has a floor to compare
with; the ``gmm`` dataset is a :class:`~denoisekit.oracle.GaussianMixture`, whose exact denoiser
(:func:`toy2d_oracle`) a trained network can be compared with at every noise level.

=============  ===============================================================================
name           distribution
=============  ===============================================================================
moons          two interleaved half circles with Gaussian noise (std 0.05 before scaling)
swissroll      the 2-D Swiss roll ``t (cos t, sin t)``, ``t ~ U[1.5 pi, 4.5 pi]``, noise 0.25
8gaussians     8 Gaussians (std 0.1) evenly spaced on a circle of radius sqrt(2)
checkerboard   uniform on the 8 black squares of a 4 x 4 board
gmm            ``GaussianMixture.random(dim=2, components=8, seed=0)``: random anisotropic mixture
=============  ===============================================================================
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .._utils import lookup
from ..oracle import GaussianMixture

#: The mixture behind the ``gmm`` dataset; its structure is fixed, only the draws depend on the seed.
GMM_COMPONENTS, GMM_SEED = 8, 0


def _rand(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _randn(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def make_moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved half circles (the scikit-learn classic), centred and scaled by 1/0.707."""
    t = _rand(n, generator) * math.pi
    lower = torch.randint(0, 2, (n,), generator=generator).bool()
    x = torch.where(lower, 1 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    pts = torch.stack([x, y], 1) + 0.05 * _randn((n, 2), generator)
    return ((pts - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 0.707).float()


def make_swissroll(n: int, generator: torch.Generator) -> Tensor:
    """The 2-D Swiss roll ``t (cos t, sin t)`` with ``t ~ U[1.5 pi, 4.5 pi]``, centred, scaled by 1/6.8."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + 0.25 * _randn((n, 2), generator)
    return ((pts - torch.tensor([2.0, 0.2], dtype=torch.float64)) / 6.8).float()


def make_8gaussians(n: int, generator: torch.Generator) -> Tensor:
    """Eight Gaussians of std 0.1 at angles ``k pi / 4`` on a circle of radius sqrt(2) (unit variance)."""
    k = torch.randint(0, 8, (n,), generator=generator).to(torch.float64)
    centres = math.sqrt(2) * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return (centres + 0.1 * _randn((n, 2), generator)).float()


def make_checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the black squares of a 4 x 4 board over ``[-2, 2]^2``, scaled to unit variance."""
    col = torch.randint(0, 4, (n,), generator=generator)
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + col % 2  # black: row + col even
    offset = torch.stack([_rand(n, generator), _rand(n, generator)], 1)
    pts = torch.stack([col, row], 1).to(torch.float64) + offset - 2
    return (pts / (4 / math.sqrt(12))).float()


def gmm_mixture() -> GaussianMixture:
    """The Gaussian mixture the ``gmm`` dataset samples from (its exact denoiser is ``gm(y, sigma)``)."""
    return GaussianMixture.random(dim=2, components=GMM_COMPONENTS, seed=GMM_SEED)


def make_gmm(n: int, generator: torch.Generator) -> Tensor:
    """Exact draws from :func:`gmm_mixture`."""
    return gmm_mixture().sample(n, generator).float()


DATASETS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "moons": make_moons,
    "swissroll": make_swissroll,
    "8gaussians": make_8gaussians,
    "checkerboard": make_checkerboard,
    "gmm": make_gmm,
}


#: A student's own points: ``(N, 2)`` in ``.npy``, ``.npz`` (key ``points``, or its only array) or ``.csv``.
POINTS_SUFFIXES = (".npy", ".npz", ".csv")


def is_points_file(name: str) -> bool:
    """Whether a dataset name is a points file (by its extension) rather than a built-in dataset."""
    return Path(name).suffix.lower() in POINTS_SUFFIXES


def read_points(path: str | os.PathLike[str]) -> Tensor:
    """The ``(N, 2)`` float32 points of a ``.npy``, ``.npz`` or ``.csv`` file (a header row is skipped);
    a missing file, another extension, another shape, fewer than 2 points or NaN/inf is a ``ValueError``
    naming the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POINTS_SUFFIXES:
        raise ValueError(f"points file {str(path)!r}: unknown extension {suffix!r}; allowed: "
                         f"{', '.join(POINTS_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"points file {str(path)!r} does not exist")
    try:
        if suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if "points" not in f.files and len(f.files) != 1:
                    raise ValueError(f"has arrays {', '.join(f.files)}: name the points 'points'")
                a = f["points"] if "points" in f.files else f[f.files[0]]
        else:
            a = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=_header_rows(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"points file {str(path)!r}: {e}") from None
    if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 2 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"points file {str(path)!r}: expected an (N, 2) array of numbers with N >= 2, got "
                         f"shape {a.shape} of {a.dtype}")
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if len(bad):
        raise ValueError(f"points file {str(path)!r}: row {int(bad[0])} is not finite ({len(bad)} such rows)")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def save_points(path: str | os.PathLike[str], points: Tensor) -> None:
    """``(N, 2)`` points to a ``.npy``, ``.npz`` (key ``points``) or ``.csv`` (header ``x,y``) file, atomically:
    what :func:`read_points` reads back."""
    from ..io import write_atomic

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POINTS_SUFFIXES:
        raise ValueError(f"points file {str(path)!r}: unknown extension {suffix!r}; allowed: "
                         f"{', '.join(POINTS_SUFFIXES)}")
    a = torch.as_tensor(points).detach().cpu().float().numpy()

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            if suffix == ".npy":
                np.save(f, a)
            elif suffix == ".npz":
                np.savez(f, points=a)
            else:
                np.savetxt(f, a, delimiter=",", header="x,y", comments="", fmt="%.9g")

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)


def _header_rows(path: Path) -> int:
    with open(path) as f:
        first = f.readline().split(",")
    try:
        [float(v) for v in first]
    except ValueError:
        return 1
    return 0


def sample_toy2d(name: str, n: int, seed: int = 0) -> Tensor:
    """``n`` points ``(n, 2)`` float32 of dataset ``name``, the same for the same ``seed``."""
    make = lookup("dataset", DATASETS, name)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of points must be an integer >= 1, got {n!r}")
    return make(n, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- exact densities
# Each dataset is a known distribution, so held-out NLLs have an exact reference: the entropy a
# perfect model would reach. ``sigma`` smooths it by N(0, sigma^2 I), as a model's NLL at sigma_min is.

#: Points of the midpoint rule along each curve. Their spacing (moons 1e-3, Swiss roll 3e-3) is far
#: below the noise width (0.07, 0.037): the rule's error for a Gaussian kernel is ~exp(-2 pi^2 w^2 / h^2).
CURVE_POINTS = 4_000


def _curve_log_prob(x: Tensor, curve: Tensor, std: float) -> Tensor:
    """``log mean_k N(x; curve_k, std^2 I)`` for ``x (N, 2)``, ``curve (K, 2)``, in chunks of ``x``."""
    out = []
    for chunk in x.split(max(1, 4_000_000 // curve.shape[0])):
        d2 = (chunk.pow(2).sum(1, keepdim=True) + curve.pow(2).sum(1) - 2 * chunk @ curve.T).clamp_min(0)
        out.append(torch.logsumexp(-d2 / (2 * std**2), dim=1))
    return torch.cat(out) - math.log(curve.shape[0]) - math.log(2 * math.pi * std**2)


def _midpoints(lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * (torch.arange(CURVE_POINTS, dtype=torch.float64) + 0.5) / CURVE_POINTS


def _log_prob_moons(x: Tensor, sigma: float) -> Tensor:
    t = _midpoints(0.0, math.pi)
    upper = torch.stack([torch.cos(t), torch.sin(t)], 1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    curve = (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 0.707
    return _curve_log_prob(x, curve, math.hypot(0.05 / 0.707, sigma))


def _log_prob_swissroll(x: Tensor, sigma: float) -> Tensor:
    t = _midpoints(1.5 * math.pi, 4.5 * math.pi)
    curve = (torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) - torch.tensor([2.0, 0.2], dtype=torch.float64)) / 6.8
    return _curve_log_prob(x, curve, math.hypot(0.25 / 6.8, sigma))


def _log_prob_8gaussians(x: Tensor, sigma: float) -> Tensor:
    k = torch.arange(8, dtype=torch.float64)
    centres = math.sqrt(2) * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return _curve_log_prob(x, centres, math.hypot(0.1, sigma))


def _log_prob_checkerboard(x: Tensor, sigma: float) -> Tensor:
    side = math.sqrt(12) / 4  # one square, after scaling [-2, 2]^2 to unit variance
    cells = torch.tensor([(c, r) for r in range(4) for c in range(4) if (r + c) % 2 == 0], dtype=torch.float64)
    lo = (cells - 2) * side  # (8, 2) lower-left corners
    diff_lo, diff_hi = x[:, None, :] - lo[None], x[:, None, :] - (lo + side)[None]  # (N, 8, 2)
    if sigma > 0:  # P(lo <= x + sigma z <= hi) per axis, exactly
        normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        mass = (normal.cdf(-diff_hi / sigma) - normal.cdf(-diff_lo / sigma)).prod(-1)
    else:  # the tolerance keeps float32 draws that round onto an edge inside
        mass = ((diff_lo >= -1e-6) & (diff_hi <= 1e-6)).all(-1).to(torch.float64)
    return torch.log(mass.sum(1)) - math.log(8 * side**2)


def toy2d_log_prob(name: str, x: Tensor, sigma: float = 0.0) -> Tensor:
    """Exact ``log p(x)`` (nats, float64 ``(N,)``) of dataset ``name``, smoothed by ``N(0, sigma^2 I)``.

    Moons and the Swiss roll are a uniform curve plus Gaussian noise, integrated along the curve by
    the midpoint rule; 8gaussians and gmm are Gaussian mixtures; the checkerboard is uniform on its
    squares (``-inf`` outside them when ``sigma = 0``).
    """
    lookup("dataset", DATASETS, name)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"expected points of shape (N, 2), got {tuple(x.shape)}")
    if name == "gmm":
        return gmm_mixture().log_prob(x, sigma)
    return {"moons": _log_prob_moons, "swissroll": _log_prob_swissroll, "8gaussians": _log_prob_8gaussians,
            "checkerboard": _log_prob_checkerboard}[name](x, sigma)


def toy2d_oracle(name: str) -> GaussianMixture | None:
    """The exact distribution of dataset ``name`` when it is a Gaussian mixture, else ``None``."""
    lookup("dataset", DATASETS, name)
    return gmm_mixture() if name == "gmm" else None
