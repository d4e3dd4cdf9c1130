import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from denoisekit.eval import fid as fid_module
from denoisekit.eval.fid import (density_coverage, feature_metrics, feature_statistics, fid_from_features,
                                 frechet_distance, kernel_inception_distance, knn_radii, mmd2_polynomial,
                                 precision_recall)


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# --- Frechet distance --------------------------------------------------------------------------------

def test_frechet_distance_matches_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    fd = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert fd == pytest.approx(9 + 1, rel=1e-12)
    # commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    mu = torch.tensor([0.0, 1.0, 2.0])
    fd = frechet_distance(mu, torch.diag(a), mu + 1, torch.diag(b))
    assert fd == pytest.approx(3 + float((a.sqrt() - b.sqrt()).pow(2).sum()), rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    s1, s2 = _spd(20, 0), _spd(20, 1)
    mu1, mu2 = torch.randn(20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float((mu1 - mu2).pow(2).sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_from_samples_converges_to_the_gaussians():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    s1, s2 = _spd(d, 2), _spd(d, 3)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T + 0.5
    exact = frechet_distance(torch.zeros(d), s1, torch.full((d,), 0.5), s2)
    assert fid_from_features(x, y) == pytest.approx(exact, rel=0.02)


def test_frechet_distance_is_stable_for_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances (sqrtm-based code produces complex parts here)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 64, generator=g, dtype=torch.float64), torch.randn(10, 64, generator=g, dtype=torch.float64)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    fd = fid_from_features(x, y)
    assert math.isfinite(fd) and fd > 0
    mu, cov = feature_statistics(x)
    assert torch.linalg.matrix_rank(cov) == 9
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-6)


def test_bad_feature_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fid_from_features(torch.zeros(5), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="dimension"):
        fid_from_features(torch.zeros(5, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(torch.full((5, 2), float("nan")), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="N >= 11"):  # k + 1 points are needed for k-NN radii
        precision_recall(torch.zeros(10, 2), torch.zeros(10, 2), k=10)


# --- KID ---------------------------------------------------------------------------------------------

def test_mmd2_polynomial_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert mmd2_polynomial(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_for_identical_distributions():
    # Many independent small draws from one distribution: the mean estimate is zero within its standard
    # error, while the biased (V-statistic) estimate, which keeps the diagonal terms, is clearly positive.
    g = torch.Generator().manual_seed(0)
    vals, biased = [], []
    for _ in range(300):
        x = torch.randn(30, 8, generator=g, dtype=torch.float64)
        y = torch.randn(30, 8, generator=g, dtype=torch.float64)
        vals.append(mmd2_polynomial(x, y))
        kxx, kyy = (x @ x.T / 8 + 1) ** 3, (y @ y.T / 8 + 1) ** 3
        biased.append(float(kxx.mean() + kyy.mean() - 2 * ((x @ y.T / 8 + 1) ** 3).mean()))
    v = torch.tensor(vals)
    se = float(v.std() / math.sqrt(len(v)))
    assert abs(float(v.mean())) < 3 * se
    assert float(torch.tensor(biased).mean()) > 10 * se


def test_kid_subsets_gram_and_direct_paths_agree(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 6, generator=g, dtype=torch.float64)
    y = torch.randn(90, 6, generator=g, dtype=torch.float64) + 1.0
    fast = kernel_inception_distance(x, y, n_subsets=20, subset_size=50, seed=3)
    monkeypatch.setattr(fid_module, "_GRAM_LIMIT", 0)
    slow = kernel_inception_distance(x, y, n_subsets=20, subset_size=50, seed=3)
    assert fast == pytest.approx(slow, rel=1e-9)
    assert fast[0] > 3 * fast[1]  # a shift is detected in every subset
    same = kernel_inception_distance(x[:60], x[60:], n_subsets=20, subset_size=50)
    assert abs(same[0]) < fast[0] / 10


# --- precision / recall, density / coverage ----------------------------------------------------------

def test_knn_radii_brute_force():
    x = torch.randn(15, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = torch.cdist(x, x)
    expected = d.sort(1).values[:, 3]
    assert torch.allclose(knn_radii(x, 3), expected)


def test_precision_recall_identical_disjoint_and_collapsed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert density_coverage(x, x)[1] == 1.0
    assert precision_recall(x, x + 100) == (0.0, 0.0)
    assert density_coverage(x, x + 100) == (0.0, 0.0)
    # mode collapse: generated points all near one real point -> high precision, low recall/coverage
    collapsed = x[0] + 0.01 * torch.randn(300, 5, generator=g, dtype=torch.float64)
    p, r = precision_recall(x, collapsed)
    assert p == 1.0 and r < 0.05
    assert density_coverage(x, collapsed)[1] < 0.05
    # a fresh draw from the same distribution: density near 1 (Naeem et al. 2020, sec. 4)
    y = torch.randn(2000, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(2000, 5, generator=g, dtype=torch.float64)
    density, coverage = density_coverage(x2, y)
    assert 0.85 < density < 1.15 and coverage > 0.9


def test_feature_metrics_keys():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    out = feature_metrics(x, x.flip(0), kid_subsets=5)
    assert set(out) == {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    assert out["fd"] == pytest.approx(0.0, abs=1e-9) and (out["precision"], out["recall"]) == (1.0, 1.0)


# --- validation on digits with the trained feature network (issue: real-vs-real ~0, degradations monotone) --

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # the same cache directory as tests/test_features.py, so the network is trained once per session
    return tmp_path_factory.getbasetemp() / "denoisekit-cache"


@pytest.fixture(scope="module")
def digits_halves(cache_dir):
    from denoisekit.data.digits import DigitsDataset
    from denoisekit.eval.features import digits_feature_network, extract_features

    net = digits_feature_network(cache_dir=cache_dir)
    x = DigitsDataset(size=16, split="all").images
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = x[perm[:898]], x[perm[898:]]
    return net, extract_features(net, a), b


def _blur(x: torch.Tensor, std: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * std))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * std ** 2))
    k = k / k.sum()
    y = F.pad(x, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


@pytest.mark.slow  # trains the digits feature network (shared cache)
def test_real_vs_real_is_near_zero_and_degradations_are_monotone(digits_halves):
    from denoisekit.eval.features import extract_features

    net, fa, b = digits_halves
    real = fid_from_features(fa, extract_features(net, b))
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(b.shape, generator=g)
    noise_levels = (0.1, 0.2, 0.3, 0.5)
    noisy = [extract_features(net, (b + s * eps).clamp(-1, 1)) for s in noise_levels]
    fid_noise = [fid_from_features(fa, f) for f in noisy]
    fid_blur = [fid_from_features(fa, extract_features(net, _blur(b, s))) for s in (0.5, 0.75, 1.0, 1.5)]
    # measured: real 0.21; noise 0.45, 2.9, 9.1, 26; blur 0.54, 2.4, 7.1, 29
    assert real < 0.5 and real < fid_noise[1] / 5 and real < fid_blur[1] / 5
    assert all(a < b for a, b in zip([real] + fid_noise, fid_noise))
    assert all(a < b for a, b in zip([real] + fid_blur, fid_blur))
    precision = [precision_recall(fa, f)[0] for f in noisy[:3]]
    assert all(a > b for a, b in zip(precision, precision[1:]))  # measured 0.88, 0.64, 0.39
    kid, _ = kernel_inception_distance(fa, extract_features(net, b))
    kid_noisy, _ = kernel_inception_distance(fa, noisy[1])
    assert abs(kid) < kid_noisy / 10  # measured -0.0015 vs 0.052


@pytest.mark.slow  # trains the digits feature network (shared cache)
def test_evaluate_end_to_end_from_npz(digits_halves, cache_dir, tmp_path):
    from denoisekit.data.digits import DigitsDataset
    from denoisekit.data.transforms import tensor_to_uint8
    from denoisekit.eval.report import evaluate, format_metrics

    ds = DigitsDataset(size=16, split="test")
    path = tmp_path / "samples.npz"
    np.savez(path, images=tensor_to_uint8(ds.images), labels=ds.labels.numpy())
    out = evaluate(str(path), ref="digits", cache_dir=cache_dir, kid_subsets=10)
    assert out["n_samples"] == len(ds) and out["n_ref"] == 1797
    assert out["classifier_accuracy"] > 0.97 and out["class_coverage"] == 1.0
    assert out["ref_classifier_accuracy"] > 0.98
    assert out["fid"] < 2 and out["precision"] > 0.8
    assert "FID" in format_metrics(out)
    # the same against an .npz reference, with the network named explicitly
    ref = tmp_path / "ref.npz"
    np.savez(ref, images=tensor_to_uint8(DigitsDataset(size=16, split="train").images))
    out2 = evaluate(ds.images, ref=str(ref), features="digits", cache_dir=cache_dir, kid_subsets=10)
    assert "classifier_accuracy" not in out2 and out2["fid"] < 2
    with pytest.raises(ValueError, match="unknown features 'vgg'; allowed: auto"):
        evaluate(ds.images, ref=str(ref), features="vgg", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="accepted: a built-in dataset"):  # any --ref: tests/test_eval_any_data.py
        evaluate(ds.images, ref="imagenet", cache_dir=cache_dir)


def test_kid_spread_is_not_zero_when_the_sets_are_smaller_than_a_subset():
    # 300 vs 300 points with subsets of 1000: whole-set draws would all be equal (std 0, a false certainty);
    # half-set subsets give a spread, and the mean stays near the whole-set estimate.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = torch.randn(300, 6, generator=g, dtype=torch.float64) + 0.3
    kid, std = kernel_inception_distance(x, y, n_subsets=50)
    assert std > 0 and abs(kid - mmd2_polynomial(x, y)) < 3 * std
