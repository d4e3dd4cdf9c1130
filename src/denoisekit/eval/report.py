"""One call for every sample-quality metric of a set of generated images against a reference set.

:func:`evaluate` embeds both sets with a feature network (a built-in dataset's classifier from
:mod:`denoisekit.eval.features`, or Inception-v3 from a local weights file), then computes the Frechet
distance, KID, precision/recall and density/coverage of :mod:`denoisekit.eval.fid`; with a classifier
it adds the class accuracy of labelled samples and their class coverage. This is what
``denoisekit eval SAMPLES.npz --ref DATASET_OR_NPZ`` prints.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import check_choice
from .alignment import shapes_feature_network
from .features import FeatureClassifier, as_images, extract_features
from .fid import feature_metrics
from .inception import load_fid_inception
from .networks import FEATURE_NETWORKS
from .reference import Reference, load_reference
from .selfsup import SelfSupConfig, selfsup_feature_network

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


#: What ``features=`` may be besides a module: automatic, Inception, self-supervised or a built-in network.
BUILTIN_NETWORKS: dict[str, Callable[..., FeatureClassifier]] = {**FEATURE_NETWORKS, "shapes": shapes_feature_network}
FEATURES = ("auto", "inception", "selfsup", *BUILTIN_NETWORKS)
#: Metrics that get a real-vs-real floor.
FLOORED = ("fid", "kid", "precision", "recall", "density", "coverage")


def _choose(features: str, ref: Reference, inception: str | os.PathLike | None) -> str:
    check_choice("features", features, FEATURES)
    if features != "auto":
        return features
    if inception is not None:
        return "inception"
    return ref.dataset if ref.dataset in BUILTIN_NETWORKS else "selfsup"


def _extractor(features: str | nn.Module, ref: Reference, fit_images: Tensor, inception: str | os.PathLike | None,
               cache_dir: str | os.PathLike | None, selfsup: SelfSupConfig) -> tuple[nn.Module, str, dict[str, Any]]:
    """``(network, description, facts)``; ``fit_images``: what a self-supervised network trains on."""
    if isinstance(features, nn.Module):
        return features, type(features).__name__, {"kind": "module"}
    name = _choose(features, ref, inception)
    if name == "inception":
        if inception is None:
            raise ValueError("features='inception' needs inception=<path to local FID Inception-v3 weights> "
                             "(--inception)")
        return load_fid_inception(inception), f"inception-v3 ({inception})", {"kind": "inception",
                                                                             "weights": str(inception)}
    if name == "selfsup":
        net = selfsup_feature_network(fit_images, ref.name, selfsup, cache_dir=cache_dir)
        i = net.info
        desc = (f"self-supervised network trained on {ref.name} ({fit_images.shape[0]} images, hash {i['key']}; "
                f"{i['cache_status']} {i['cache']})")
        return net, desc, {"kind": "selfsup", "trained_on": ref.name, "n_train": fit_images.shape[0],
                           "hash": i["key"], "cache": i["cache"], "cache_status": i["cache_status"],
                           "train_seconds": i.get("train_seconds")}
    net = BUILTIN_NETWORKS[name](cache_dir=cache_dir)
    acc = net.info.get("test_accuracy", float("nan"))
    return net, f"{name} classifier network (built in; test accuracy {acc:.4f})", {"kind": "builtin", "name": name}


def _fit_to(x: Tensor, net: nn.Module, what: str, desc: str) -> Tensor:
    """``x`` with the channels ``net`` reads (grey repeated to RGB, RGB to luma), with a warning naming both;
    a warning when the network will resize it."""
    channels = getattr(net, "in_channels", None)
    if channels is not None and x.shape[1] != channels:
        warnings.warn(f"{what} have {x.shape[1]} channel(s), the feature network ({desc.split(' (')[0]}) reads "
                      f"{channels}: converted", stacklevel=3)
        x = x.repeat(1, 3, 1, 1) if channels == 3 else (x * LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)
    size = getattr(getattr(net, "config", None), "image_size", None)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        warnings.warn(f"{what} are {x.shape[-2]}x{x.shape[-1]}, the feature network ({desc.split(' (')[0]}) reads "
                      f"{size}x{size}: resized (bilinear, antialiased)", stacklevel=3)
    return x


#: ITU-R BT.601 luma weights, for RGB images scored by a grey network.
LUMA = torch.tensor([0.299, 0.587, 0.114])


def split_reference(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded disjoint halves ``(R, H)`` of ``range(n)``: the reference and the held-out set of the floor."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n - n // 2].sort().values, perm[n - n // 2:].sort().values


def _labels(labels: Any, n: int, num_classes: int) -> Tensor:
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if y.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match the samples, got {tuple(np.shape(labels))}")
    if (y >= num_classes).any():
        raise ValueError(f"labels must be < {num_classes} (or -1 for unlabelled), got {int(y.max())}")
    return y


def class_metrics(model: FeatureClassifier, x: Tensor, labels: Any = None, batch_size: int = 256) -> dict[str, Any]:
    """Classifier view of images by the model's ``label_head``: predicted class counts, class coverage (classes
    predicted for at least ``COVERAGE_SHARE * N / C`` images) and, for labelled images (label >= 0), accuracy."""
    head = model.label_head
    if head is None:
        raise ValueError("this feature network has no head that reads the dataset's labels (label_head is None)")
    c = model.num_classes[head]
    pred = torch.cat([model.predict(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    pred = pred[:, head] if model.multi_head else pred
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
             batch_size: int = 256, device: Any = None, ref_limit: int | None = None,
             selfsup: SelfSupConfig = SelfSupConfig()) -> dict[str, Any]:
    """Every metric of generated ``samples`` against ``ref``, each with its real-vs-real floor, as a JSON-ready dict.

    ``samples``: uint8 ``(N, H, W, C)`` or float ``(N, C, H, W)`` in [-1, 1], or a path to an ``.npz`` with
    ``images`` (its ``labels`` are used when ``labels`` is None). ``ref``: a dataset spec (a built-in name,
    a folder, an ``.npz``, a run config ``.yaml``; see :mod:`denoisekit.eval.reference`; built-in and folder
    sets are read at the samples' size) or images. ``features``: ``"auto"`` (Inception when ``inception`` is
    given, else the reference dataset's built-in network, else ``"selfsup"``), ``"inception"``,
    ``"selfsup"`` (trained on the reference, cached by its hash), a built-in name (``digits``, ``shapes3``, ``shapes``), or
    any module with ``features(x) -> (B, D)``.

    Keys: ``fid`` (Frechet distance in the chosen feature space), ``kid``, ``kid_std``, ``precision``,
    ``recall`` (k-NN, ``k``), ``density``, ``coverage`` (``dc_k``), ``floor`` (the same metrics between two
    halves of the reference, see the module docstring), ``n_samples``, ``n_ref``, ``n_compared`` (images per
    side of both comparisons), ``ref``, ``feature_network`` (what it is, in words) and
    ``feature_network_info``; with a classifier whose ``label_head`` reads the labels also ``class_counts``,
    ``class_coverage``, ``ref_class_coverage``, ``classifier_accuracy`` (samples with labels >= 0) and
    ``ref_classifier_accuracy``.
    """
    if isinstance(samples, (str, os.PathLike)):
        samples, file_labels = load_npz_images(samples)
        labels = file_labels if labels is None else labels
    x = as_images(samples, "samples")
    if isinstance(ref, (str, os.PathLike)):
        reference = load_reference(ref, size=x.shape[-1] if x.shape[-1] == x.shape[-2] else None,
                                   channels=x.shape[1], limit=ref_limit)
    else:
        reference = Reference(as_images(ref, "reference images"), None, "images", "the given images")
    r = reference.images
    if r.shape[0] < 2 * (max(k, dc_k) + 1):
        raise ValueError(f"reference {reference.name}: {r.shape[0]} images; need at least {2 * (max(k, dc_k) + 1)} "
                         "(half of them are held out for the real-vs-real floor)")
    keep, held = split_reference(r.shape[0], seed)
    net, desc, facts = _extractor(features, reference, r[keep], inception, cache_dir, selfsup)
    if device is not None:
        net = net.to(device)
    x, r = _fit_to(x, net, "samples", desc), _fit_to(r, net, f"reference images ({reference.name})", desc)
    m = min(x.shape[0], held.shape[0])
    if m < max(k, dc_k) + 1:
        raise ValueError(f"need at least {max(k, dc_k) + 1} samples for precision/recall (k={k}) and density/coverage "
                         f"(k={dc_k}), got {x.shape[0]}")
    fx = extract_features(net, x, batch_size, device)
    fr = extract_features(net, r, batch_size, device)
    kw = dict(k=k, dc_k=dc_k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    out: dict[str, Any] = feature_metrics(fr[keep], fx[:m], **kw)
    floor = feature_metrics(fr[keep], fr[held[:m]], **kw)
    out["fid"], floor["fid"] = out.pop("fd"), floor.pop("fd")
    out.update(floor=floor, n_samples=x.shape[0], n_ref=r.shape[0], n_compared=m, n_ref_kept=int(keep.shape[0]),
               ref=reference.name, feature_network=desc, feature_network_info=facts)
    if isinstance(net, FeatureClassifier) and net.label_head is not None:
        dev = next(net.parameters()).device
        out.update(class_metrics(net, x.to(dev), labels, batch_size))
        ref_cls = class_metrics(net, r.to(dev), reference.labels, batch_size)
        out["ref_class_coverage"] = ref_cls["class_coverage"]
        if "classifier_accuracy" in ref_cls:
            out["ref_classifier_accuracy"] = ref_cls["classifier_accuracy"]
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human-readable block of :func:`evaluate`'s result: one metric per line, its floor beside it."""
    floor = metrics.get("floor", {})
    m = metrics.get("n_compared")

    def row(label: str, key: str, fmt: str) -> str:
        f = f"{floor[key]:{fmt}}" if key in floor else "-"
        return f"{label:<11}{metrics[key]:>10{fmt}}   {f:>10}"

    lines = [f"feature network: {metrics.get('feature_network', '?')}",
             f"samples: {metrics.get('n_samples')}, reference: {metrics.get('n_ref')} "
             f"({metrics.get('ref', '?')}); each comparison: {m} images against {metrics.get('n_ref_kept')} "
             "reference images",
             f"{'metric':<11}{'samples':>10}   {'real-real':>10}",
             row("FID", "fid", ".4f"),
             row("KID", "kid", ".5f") + f"   (+- {metrics['kid_std']:.5f})",
             row("precision", "precision", ".4f"), row("recall", "recall", ".4f"),
             row("density", "density", ".4f"), row("coverage", "coverage", ".4f"),
             "real-real: the same metric between two disjoint halves of the reference (the best a model can expect)"]
    if "classifier_accuracy" in metrics:
        lines.append(f"classifier accuracy {metrics['classifier_accuracy']:.4f}")
    if "class_coverage" in metrics:
        lines.append(f"class coverage {metrics['class_coverage']:.2f} (counts {metrics['class_counts']})")
    return "\n".join(lines)
