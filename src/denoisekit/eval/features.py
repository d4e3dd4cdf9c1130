"""Feature networks for sample-quality metrics: a small CNN classifier that denoisekit trains and caches.

FID-style metrics need a fixed network whose penultimate features separate what matters in the data
(Heusel et al. 2017 use Inception-v3, see :mod:`denoisekit.eval.inception`). For a built-in dataset
no ImageNet network is needed: :func:`train_classifier` fits :class:`FeatureClassifier` to any
labelled set of images in [-1, 1] (one or several label heads, e.g. digit class, or shape / colour /
count attributes), deterministically from a seed, as a run on the training engine
(:mod:`denoisekit.eval.feature_recipe`); :func:`cached_classifier` stores the result under
the cache directory keyed by a hash of the data and the config, so it is trained once per machine.
The same network gives features (FID, KID, precision/recall), the classifier accuracy of
class-conditional samples, and their class coverage.

Images: float ``(N, C, H, W)`` in [-1, 1], or ``uint8`` ``(N, H, W, C)`` arrays as written by
``denoisekit sample --out x.npz`` (see :func:`as_images`); any size, resized to the network's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import default_cache_dir, write_atomic
from .feature_net import FORMAT, META_FILE, WEIGHTS_FILE, ClassifierConfig, FeatureClassifier, cache_key, resize_images  # noqa: F401  (public here too)

def as_images(x: Any, name: str = "images", channels: Sequence[int] = (1, 3)) -> Tensor:
    """Float32 images ``(N, C, H, W)`` in [-1, 1] from a uint8 ``(N, H, W, C)`` / ``(N, H, W)`` array or tensor
    (0..255) or a float ``(N, C, H, W)`` array or tensor in [-1, 1]; a clear ``ValueError`` otherwise."""
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise ValueError(f"{name}: expected a numeric array, got dtype object")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    allowed = " or ".join(map(str, channels))
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in channels:
            raise ValueError(f"{name}: uint8 images must be (N, H, W, C) with C = {allowed}, "
                             f"got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    elif x.is_floating_point():
        if x.ndim != 4 or x.shape[1] not in channels:
            hint = " (channels last? float images are channels first)" if x.ndim == 4 and x.shape[-1] in channels \
                else ""
            raise ValueError(f"{name}: float images must be (N, C, H, W) with C = {allowed}, "
                             f"got shape {tuple(x.shape)}{hint}")
        x = x.detach().float()
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: images contain NaN or inf")
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
        if lo < -1.01 or hi > 1.01:
            raise ValueError(f"{name}: float images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             "(pass uint8 arrays for 0..255 images)")
        x = x.clamp(-1, 1)
    else:
        raise ValueError(f"{name}: expected uint8 (N, H, W, C) or float (N, C, H, W) images, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"{name}: need at least one image of at least 2x2 pixels, got shape {tuple(x.shape)}")
    return x.contiguous()


def extract_features(extractor: Any, images: Any, batch_size: int = 256, device: Any = None) -> Tensor:
    """Features ``(N, D)`` float64 of ``images`` (see :func:`as_images`) by ``extractor.features`` or, for a
    plain module, its forward; batched, in eval mode, without gradients."""
    x = as_images(images)  # the extractor checks channels: grey is an error here, repeated to RGB by Inception
    fn = getattr(extractor, "features", extractor)
    was = extractor.training
    extractor.eval()
    dev = device if device is not None else next(extractor.parameters()).device
    out = [fn(x[i:i + batch_size].to(dev)).double().cpu() for i in range(0, x.shape[0], batch_size)]
    extractor.train(was)
    return torch.cat(out)


def _as_labels(labels: Any, n: int, num_classes: list[int]) -> Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long()
    y = y[:, None] if y.ndim == 1 else y
    if y.shape != (n, len(num_classes)):
        raise ValueError(f"labels must be ({n},) or ({n}, {len(num_classes)}) for {len(num_classes)} head(s), "
                         f"got shape {tuple(y.shape)}")
    for k, c in enumerate(num_classes):
        bad = (y[:, k] < -1) | (y[:, k] >= c)
        if bad.any():
            raise ValueError(f"label head {k}: values must be in [0, {c}) or -1 (missing), got {int(y[bad][0, k])}")
    return y


def _labelled(images: Any, labels: Any, num_classes: int | Sequence[int]) -> tuple[Tensor, Tensor, list[int]]:
    x = as_images(images, "training images")
    ncls = [int(c) for c in num_classes] if not isinstance(num_classes, int) else [int(num_classes)]
    return x, _as_labels(labels, x.shape[0], ncls), ncls


def train_classifier(images: Any, labels: Any, num_classes: int | Sequence[int],
                     config: ClassifierConfig = ClassifierConfig(), *, verbose: bool = False) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on labelled images, deterministically from ``config.seed``.

    A run of :class:`~denoisekit.eval.feature_recipe.FeatureNetworkRecipe` on the engine, in a temporary
    directory: a seeded ``test_fraction`` of the images is held out; ``model.info`` reports per-head test
    accuracy (``test_accuracy`` is their mean), the split sizes and the training time. AdamW with a one-cycle
    learning rate (warm-up then cosine decay; Smith & Topin 2019), cross-entropy with label smoothing
    (Szegedy et al. 2016), label ``-1`` = missing (ignored). Runs single-threaded with deterministic
    kernels so the weights depend on the seed only.
    """
    x, y, ncls = _labelled(images, labels, num_classes)
    with tempfile.TemporaryDirectory(prefix="denoisekit-features-") as tmp:
        return _train("", x, y, ncls, config, Path(tmp), verbose)


def _train(name: str, x: Tensor, y: Tensor, ncls: list[int], config: ClassifierConfig, tmp: Path,
           verbose: bool) -> FeatureClassifier:
    from .feature_recipe import FeatureRunConfig, train_feature_network  # at call time: it builds on this module

    run_config = FeatureRunConfig.create(config, name, x, y, ncls)
    return _load_cached(train_feature_network(run_config, x, y, tmp / "run", verbose=verbose), run_config.key)


def _load_cached(folder: Path, key: str) -> FeatureClassifier:
    from safetensors.torch import load_file

    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError(f"format/key mismatch in {folder / META_FILE}")
    config = ClassifierConfig(**meta["config"])
    nc = meta["num_classes"]
    model = FeatureClassifier(meta["in_channels"], nc if meta["multi_head"] else nc[0], config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    model.info = dict(meta["info"])
    return model.eval().requires_grad_(False)


def cached_classifier(name: str, images: Any, labels: Any, num_classes: int | Sequence[int],
                      config: ClassifierConfig = ClassifierConfig(), *, cache_dir: str | os.PathLike | None = None,
                      verbose: bool = False) -> FeatureClassifier:
    """:func:`train_classifier`, or its earlier result from ``cache_dir/features/<name>-<key>/``.

    The key hashes the data, labels and config (:func:`cache_key`). The folder holds ``model.safetensors``
    and ``meta.json`` (config, classes, accuracy, training time), each written atomically; a cache that
    cannot be read is retrained with a warning. ``model.info["cache"]`` says where it lives and whether it
    was ``"loaded"`` or ``"trained"``.
    """

    x, y, ncls = _labelled(images, labels, num_classes)
    key = cache_key(name, x, y, ncls, config)
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "features" \
        / f"{name}-{key}"
    if (folder / META_FILE).exists() or (folder / WEIGHTS_FILE).exists():
        try:
            model = _load_cached(folder, key)
            model.info.update(cache=str(folder), cache_status="loaded")
            return model
        except Exception as e:  # corrupt or partial files: json, safetensors and torch raise their own types
            warnings.warn(f"feature network cache {folder} is unreadable ({type(e).__name__}: {e}); retraining",
                          stacklevel=2)
    with tempfile.TemporaryDirectory(prefix="denoisekit-features-") as tmp:
        model = _train(name, x, y, ncls, config, Path(tmp), verbose)
        store_in_cache(Path(tmp) / "run", folder)
    model.info.update(cache=str(folder), cache_status="trained")
    return model


def store_in_cache(run: Path, folder: Path) -> None:
    """Copy a feature network's ``model.safetensors`` then ``meta.json`` (last: it marks a complete entry) from
    the run directory ``run`` into the cache ``folder``; a warning, not an error, when the disk refuses."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS_FILE, META_FILE):
            write_atomic(folder / file, lambda p, f=file: shutil.copyfile(run / f, p))
    except OSError as e:  # a read-only or full disk costs a retrain next time, not this result
        warnings.warn(f"cannot write the feature network cache {folder} ({e}); it will be retrained next time",
                      stacklevel=3)


# --- built-in datasets -------------------------------------------------------------------------------

#: The digits network: 8x8 digits upsampled to 16x16, which also serves 32x32 samples at digit detail.
DIGITS_CONFIG = ClassifierConfig()


def digits_labelled() -> tuple[Tensor, Tensor]:
    """All 1797 scikit-learn digits at their native 8x8: images ``(N, 1, 8, 8)`` in [-1, 1], labels ``(N,)``."""
    from ..data.digits import DigitsDataset

    ds = DigitsDataset(size=8, split="all")
    return ds.images, ds.labels


def digits_feature_network(cache_dir: str | os.PathLike | None = None, config: ClassifierConfig = DIGITS_CONFIG,
                           verbose: bool = False) -> FeatureClassifier:
    """The digits feature/classifier network (10 classes), trained on first use and cached."""
    x, y = digits_labelled()
    return cached_classifier("digits", x, y, 10, config, cache_dir=cache_dir, verbose=verbose)
