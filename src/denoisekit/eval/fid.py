"""Sample-quality metrics on feature vectors: Frechet distance, KID, precision/recall, density/coverage.

Every function takes two feature sets ``(N, D)`` and ``(M, D)`` (real first, generated second), computed
by a feature network from :mod:`denoisekit.eval.features`; arithmetic is float64 throughout.

- :func:`frechet_distance`: ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``, the 2-Wasserstein
  distance between Gaussians fitted to the features (Heusel et al. 2017, "FID", eq. 6; Dowson &
  Landau 1982). The trace of the matrix square root is taken from the eigenvalues of the symmetric
  ``S_1^{1/2} S_2 S_1^{1/2}``, which are those of ``S_1 S_2``: no inverse, no complex square root, so
  singular covariances (fewer samples than dimensions) are fine.
- :func:`kernel_inception_distance`: the unbiased MMD^2 estimator with the cubic polynomial kernel
  ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets (Binkowski et al. 2018, "KID", sec. 4).
- :func:`precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-2): each
  set's manifold is the union of balls reaching every point's k-th nearest neighbour (k = 3).
- :func:`density_coverage`: density and coverage (Naeem et al. 2020, eqs. 3-4), from the same balls
  around the real points only (k = 5 in the paper), so outlying real samples inflate them less.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _features(x: Any, name: str, min_rows: int = 2) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{name} must be a (N, D) feature matrix with N >= {min_rows}, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _pair(real: Any, fake: Any, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    r, f = _features(real, "real features", min_rows), _features(fake, "generated features", min_rows)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {r.shape[1]} vs {f.shape[1]}")
    return r, f


def feature_statistics(features: Any) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)``, in float64."""
    x = _features(features, "features")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _sqrt_psd(s: Tensor) -> Tensor:
    """Symmetric square root of a covariance; eigenvalues below zero are rounding error and are clipped."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Frechet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Heusel et al. 2017, eq. 6. ``tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2}))``,
    a symmetric PSD eigenproblem, stable for near-singular covariances.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"covariances {tuple(s1.shape)}, {tuple(s2.shape)}")
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return max(float(fd), 0.0)  # it is a squared distance; tiny negatives are rounding


def fid_from_features(real: Any, fake: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID when they are Inception pool features)."""
    r, f = _pair(real, fake)
    return frechet_distance(*feature_statistics(r), *feature_statistics(f))


def mmd2_polynomial(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between samples ``(m, D)`` and ``(n, D)`` with ``k(a, b) = (gamma a.b + coef0)^degree``.

    Binkowski et al. 2018, eq. 1 with the diagonal terms removed (Gretton et al. 2012, Lemma 6);
    ``gamma = 1/D`` by default, the KID kernel.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (g * (x @ x.T) + coef0) ** degree
    kyy = (g * (y @ y.T) + coef0) ** degree
    kxy = (g * (x @ y.T) + coef0) ** degree
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kernel_inception_distance(real: Any, fake: Any, n_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased cubic-kernel MMD^2 over random subsets.

    Binkowski et al. 2018, sec. 4: ``n_subsets`` draws of ``subset_size`` points (without replacement
    within a draw) from each set, seeded. When a set has no more than ``subset_size`` points, subsets are half
    the smaller set: whole-set subsets would all be the same draw, and the standard deviation would read 0.
    The estimate is unbiased at any subset size, so it can be slightly negative for identical distributions.
    """
    r, f = _pair(real, fake)
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    n, m = r.shape[0], f.shape[0]
    size = subset_size if subset_size < min(n, m) else min(n, m) // 2
    if size < 2:
        raise ValueError(f"KID needs at least 4 samples per set, got {n} and {m}")
    g = torch.Generator().manual_seed(seed)
    subsets = [(torch.randperm(n, generator=g)[:size], torch.randperm(m, generator=g)[:size]) for _ in range(n_subsets)]
    if n * n + m * m + n * m <= _GRAM_LIMIT:
        vals = _mmd2_subsets_from_gram(r, f, subsets)
    else:  # kernels of the whole sets would not fit: one subset at a time, O(size^2 D) each
        vals = torch.tensor([mmd2_polynomial(r[i], f[j]) for i, j in subsets], dtype=torch.float64)
    return float(vals.mean()), float(vals.std(unbiased=True)) if n_subsets > 1 else 0.0


#: Largest total kernel-entry count (N^2 + M^2 + NM) for which KID computes whole-set kernels once (~200 MB).
_GRAM_LIMIT = 25_000_000


def _mmd2_subsets_from_gram(r: Tensor, f: Tensor, subsets: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The unbiased MMD^2 of every subset pair at once: with 0/1 indicator columns ``w``, a subset's kernel
    sum is ``w^T K w``, so the whole-set kernels are computed once and each subset costs a matrix-vector product."""
    n, m, s, size = r.shape[0], f.shape[0], len(subsets), len(subsets[0][0])
    kern = lambda a, b: (a @ b.T / r.shape[1] + 1) ** 3  # noqa: E731  (the KID kernel of mmd2_polynomial)
    wr, wf = torch.zeros(n, s, dtype=torch.float64), torch.zeros(m, s, dtype=torch.float64)
    for k, (i, j) in enumerate(subsets):
        wr[i, k], wf[j, k] = 1.0, 1.0
    kxx, kyy = kern(r, r), kern(f, f)
    sxx = ((kxx @ wr) * wr).sum(0) - kxx.diagonal() @ wr   # (S,) off-diagonal sums
    syy = ((kyy @ wf) * wf).sum(0) - kyy.diagonal() @ wf
    sxy = ((kern(r, f) @ wf) * wr).sum(0)
    return (sxx + syy) / (size * (size - 1)) - 2 * sxy / (size * size)


def _chunked_cdist(a: Tensor, b: Tensor, chunk: int = 2048):
    """Yield ``(start, dist)`` row blocks of the Euclidean distance matrix, so ``N x M`` never sits in memory."""
    for i in range(0, a.shape[0], chunk):
        yield i, torch.cdist(a[i:i + chunk], b)


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each point of ``(N, D)`` to its k-th nearest other point ``(N,)`` (Kynkaanniemi 2019, eq. 2)."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, N-1] = [1, {x.shape[0] - 1}], got {k}")
    out = torch.empty(x.shape[0], dtype=x.dtype)
    for i, d in _chunked_cdist(x, x):
        out[i:i + d.shape[0]] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # column 0 is the point itself
    return out


def _in_balls(query: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """For each query point ``(Q, D)``, how many of the balls ``B(centre_i, radius_i)`` contain it ``(Q,)``."""
    counts = torch.empty(query.shape[0], dtype=torch.long)
    for i, d in _chunked_cdist(query, centres):
        counts[i:i + d.shape[0]] = (d <= radii[None, :]).sum(1)
    return counts


def precision_recall(real: Any, fake: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-2) with k-NN balls.

    Precision: the fraction of generated points inside the real manifold (some real point's ball);
    recall: the fraction of real points inside the generated manifold. Identical sets give ``(1, 1)``.
    """
    r, f = _pair(real, fake, min_rows=k + 1)
    precision = float((_in_balls(f, r, knn_radii(r, k)) > 0).double().mean())
    recall = float((_in_balls(r, f, knn_radii(f, k)) > 0).double().mean())
    return precision, recall


def density_coverage(real: Any, fake: Any, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 3-4) with k-NN balls around the real points.

    Density ``= 1/(kM) sum_j #{i : Y_j in B(X_i, r_i)}`` (about 1 for matching distributions, unbounded
    above); coverage ``= 1/N #{i : some Y_j in B(X_i, r_i)}``, in ``[0, 1]``.
    """
    r, f = _pair(real, fake, min_rows=k + 1)
    radii = knn_radii(r, k)
    density = float(_in_balls(f, r, radii).double().sum() / (k * f.shape[0]))
    covered = torch.zeros(r.shape[0], dtype=torch.bool)
    for i, d in _chunked_cdist(r, f):
        covered[i:i + d.shape[0]] = d.min(1).values <= radii[i:i + d.shape[0]]
    return density, float(covered.double().mean())


def feature_metrics(real: Any, fake: Any, *, k: int = 3, dc_k: int = 5, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """All of the above for two feature sets, as a dict of floats: ``fd, kid, kid_std, precision, recall,
    density, coverage``."""
    r, f = _pair(real, fake, min_rows=max(k, dc_k) + 1)
    kid, kid_std = kernel_inception_distance(r, f, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(r, f, k)
    density, coverage = density_coverage(r, f, dc_k)
    out = {"fd": fid_from_features(r, f), "kid": kid, "kid_std": kid_std, "precision": precision,
           "recall": recall, "density": density, "coverage": coverage}
    assert all(math.isfinite(v) for v in out.values())
    return out
