"""One call for every sample-quality metric of a set of generated images against a reference set.

:func:`evaluate` embeds both sets with a feature network (a built-in dataset's classifier from
:mod:`denoisekit.eval.features`, or Inception-v3 from a local weights file), then computes the Frechet
distance, KID, precision/recall and density/coverage of :mod:`denoisekit.eval.fid`; with a classifier
it adds the class accuracy of labelled samples and their class coverage. This is what
``denoisekit eval SAMPLES.npz --ref DATASET_OR_NPZ`` prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .features import FEATURE_NETWORKS, FeatureClassifier, as_images, extract_features
from .fid import feature_metrics
from .inception import load_fid_inception

#: A class counts as covered when the classifier assigns it at least this share of a uniform count N / C.
COVERAGE_SHARE = 0.2


def load_npz_images(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``images`` (and ``labels`` if present) from an ``.npz`` as written by ``denoisekit sample``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    if p.suffix != ".npz":
        raise ValueError(f"{p}: expected an .npz file with an 'images' array (uint8 (N, H, W, C))")
    with np.load(p, allow_pickle=False) as f:
        if "images" not in f.files:
            raise ValueError(f"{p}: no 'images' array; found {sorted(f.files)}")
        return f["images"], (f["labels"] if "labels" in f.files else None)


def builtin_reference(name: str, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Images ``(N, C, H, W)`` in [-1, 1] and labels of a built-in dataset, at ``size`` if given (the generated
    images' size, so both sets pass the same resizing)."""
    if name != "digits":
        raise ValueError(f"unknown reference dataset {name!r}; allowed: digits, or a path to an .npz file")
    from ..data.digits import DigitsDataset

    ds = DigitsDataset(size=size or 8, split="all")
    return ds.images, ds.labels


def _extractor(features: str | nn.Module, ref: Any, inception: str | os.PathLike | None,
               cache_dir: str | os.PathLike | None) -> tuple[nn.Module, str]:
    if isinstance(features, nn.Module):
        return features, type(features).__name__
    if features == "auto":
        if inception is not None:
            features = "inception"
        elif isinstance(ref, str) and ref in FEATURE_NETWORKS:
            features = ref
        else:
            raise ValueError("cannot choose a feature network for this reference; pass features= one of "
                             f"{', '.join(sorted(FEATURE_NETWORKS))}, "
                             "or inception=<path to local FID Inception weights>")
    if features == "inception":
        if inception is None:
            raise ValueError("features='inception' needs inception=<path to local FID Inception-v3 weights>")
        return load_fid_inception(inception), f"inception-v3 ({inception})"
    if features not in FEATURE_NETWORKS:
        raise ValueError(f"unknown feature network {features!r}; allowed: auto, inception, "
                         f"{', '.join(sorted(FEATURE_NETWORKS))}")
    net = FEATURE_NETWORKS[features](cache_dir=cache_dir)
    return net, f"{features} classifier (test accuracy {net.info.get('test_accuracy', float('nan')):.4f})"


def _labels(labels: Any, n: int, num_classes: int) -> Tensor:
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if y.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match the samples, got {tuple(np.shape(labels))}")
    if (y >= num_classes).any():
        raise ValueError(f"labels must be < {num_classes} (or -1 for unlabelled), got {int(y.max())}")
    return y


def class_metrics(model: FeatureClassifier, x: Tensor, labels: Any = None, batch_size: int = 256) -> dict[str, Any]:
    """Classifier view of images: predicted class counts, class coverage (classes predicted for at least
    ``COVERAGE_SHARE * N / C`` images) and, for labelled images (label >= 0), accuracy."""
    c = model.num_classes[0]
    pred = torch.cat([model.predict(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    counts = torch.bincount(pred, minlength=c)
    out: dict[str, Any] = {"class_counts": counts.tolist(),
                           "class_coverage": float((counts >= COVERAGE_SHARE * x.shape[0] / c).double().mean())}
    if labels is not None:
        y = _labels(labels, x.shape[0], c)
        known = y >= 0
        if known.any():
            out["classifier_accuracy"] = float((pred[known] == y[known]).double().mean())
    return out


def evaluate(samples: Any, ref: Any = "digits", *, labels: Any = None, features: str | nn.Module = "auto",
             inception: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, k: int = 3,
             dc_k: int = 5, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
             batch_size: int = 256, device: Any = None) -> dict[str, Any]:
    """Every metric of generated ``samples`` against ``ref``, as a JSON-ready dict.

    ``samples``: uint8 ``(N, H, W, C)`` or float ``(N, C, H, W)`` in [-1, 1], or a path to an ``.npz`` with
    ``images`` (its ``labels`` are used when ``labels`` is None). ``ref``: a built-in dataset name
    (``"digits"``, taken at the samples' size), a path to an ``.npz``, or images. ``features``: ``"auto"``
    (Inception when ``inception`` is given, else the reference dataset's own network), ``"inception"``,
    a built-in name, or any module with ``features(x) -> (B, D)``.

    Keys: ``fid`` (Frechet distance in the chosen feature space), ``kid``, ``kid_std``, ``precision``,
    ``recall`` (k-NN, ``k``), ``density``, ``coverage`` (``dc_k``), ``n_samples``, ``n_ref``,
    ``feature_network``; with a single-head classifier also ``class_counts``, ``class_coverage``,
    ``ref_class_coverage``, ``classifier_accuracy`` (samples with labels >= 0) and ``ref_classifier_accuracy``.
    """
    if isinstance(samples, (str, os.PathLike)):
        samples, file_labels = load_npz_images(samples)
        labels = file_labels if labels is None else labels
    x = as_images(samples, "samples")
    ref_labels = None
    if isinstance(ref, (str, os.PathLike)) and (str(ref).endswith(".npz") or Path(ref).is_file()):
        ref_images, ref_labels = load_npz_images(ref)
        r = as_images(ref_images, "reference images")
    elif isinstance(ref, str):
        r, ref_labels = builtin_reference(ref, x.shape[-1] if x.shape[-1] == x.shape[-2] else None)
    else:
        r = as_images(ref, "reference images")
    net, desc = _extractor(features, ref, inception, cache_dir)
    if device is not None:
        net = net.to(device)
    fx = extract_features(net, x, batch_size, device)
    fr = extract_features(net, r, batch_size, device)
    out: dict[str, Any] = feature_metrics(fr, fx, k=k, dc_k=dc_k, kid_subsets=kid_subsets,
                                          kid_subset_size=kid_subset_size, seed=seed)
    out["fid"] = out.pop("fd")
    out.update(n_samples=x.shape[0], n_ref=r.shape[0], feature_network=desc)
    if isinstance(net, FeatureClassifier) and not net.multi_head:
        dev = next(net.parameters()).device
        out.update(class_metrics(net, x.to(dev), labels, batch_size))
        ref_cls = class_metrics(net, r.to(dev), ref_labels, batch_size)
        out["ref_class_coverage"] = ref_cls["class_coverage"]
        if "classifier_accuracy" in ref_cls:
            out["ref_classifier_accuracy"] = ref_cls["classifier_accuracy"]
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human-readable block of :func:`evaluate`'s result, one metric per line."""
    lines = [f"feature network: {metrics.get('feature_network', '?')}",
             f"samples: {metrics.get('n_samples')}, reference: {metrics.get('n_ref')}",
             f"FID        {metrics['fid']:.4f}",
             f"KID        {metrics['kid']:.5f} +- {metrics['kid_std']:.5f}",
             f"precision  {metrics['precision']:.4f}   recall   {metrics['recall']:.4f}",
             f"density    {metrics['density']:.4f}   coverage {metrics['coverage']:.4f}"]
    if "classifier_accuracy" in metrics:
        lines.append(f"classifier accuracy {metrics['classifier_accuracy']:.4f}")
    if "class_coverage" in metrics:
        lines.append(f"class coverage {metrics['class_coverage']:.2f} (counts {metrics['class_counts']})")
    return "\n".join(lines)
