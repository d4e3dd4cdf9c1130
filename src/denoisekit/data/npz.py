"""Images stored as arrays in a NumPy ``.npz`` file (for example the output of ``denoisekit sample``).

Keys (loaded with ``allow_pickle=False``; object arrays are refused):
  images    (N, H, W, C) with C = 1 or 3, or (N, H, W) for one channel. Either uint8 (0..255) or
            float16/32/64 in ``float_range``: ``"symmetric"`` = [-1, 1] (the library's convention) or
            ``"unit"`` = [0, 1]; float values are validated against the range (NaN/inf refused).
  labels    optional, integer (N,)
  captions  optional, unicode strings (N,)

Items: ``image`` float32 ``(C, H, W)`` in ``[-1, 1]``, ``label`` int64 scalar and ``caption`` str when
present. The whole set is also ``dataset.images`` ((N, H, W, C), uint8 as stored, or float32 already
mapped to [-1, 1]) and ``dataset.labels`` (int64 (N,) or None).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .._utils import check_choice

FLOAT_DTYPES = ("float16", "float32", "float64")
ALLOWED_DTYPES = ("uint8",) + FLOAT_DTYPES
#: Slack when validating float ranges (values written in float16, or rounding on the way).
RANGE_TOLERANCE = 1e-3
CHANNELS = (1, 3)


@dataclass(frozen=True)
class NpzConfig:
    """Options of :class:`NpzDataset`: the file, the float range, and the key names."""

    path: str = ""
    float_range: Literal["symmetric", "unit"] = "symmetric"
    images_key: str = "images"
    labels_key: str = "labels"
    captions_key: str = "captions"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        if not self.path:
            raise ValueError("npz: path (the .npz file) is required")
        check_choice("npz float_range", self.float_range, ("symmetric", "unit"))


class NpzDataset(Dataset):
    """Images (and optional labels and captions) from an ``.npz`` file, validated on load."""

    Config = NpzConfig

    def __init__(self, config: NpzConfig | str | os.PathLike | None = None, **overrides: Any) -> None:
        if isinstance(config, (str, os.PathLike)):
            config = NpzConfig(path=os.fspath(config), **overrides)
        elif config is None:
            config = NpzConfig(**overrides)
        elif overrides:
            config = replace(config, **overrides)
        self.config = cfg = config
        path = cfg.path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"npz file {path!r} does not exist")
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: cannot read as an .npz archive ({e})") from e
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: is a single .npy array, expected an .npz archive with key "
                             f"{cfg.images_key!r}")
        with archive:
            keys = set(archive.files)
            if cfg.images_key not in keys:
                raise ValueError(f"{path}: missing key {cfg.images_key!r}; found keys: {sorted(keys) or 'none'}")
            images = self._read(archive, cfg.images_key)
            labels = self._read(archive, cfg.labels_key) if cfg.labels_key in keys else None
            captions = self._read(archive, cfg.captions_key) if cfg.captions_key in keys else None
        self.images = self._check_images(images)
        n = len(self.images)
        self.labels: torch.Tensor | None = None
        if labels is not None:
            if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"{path}: {cfg.labels_key!r} must be an integer array of shape ({n},), "
                                 f"got {labels.dtype} {labels.shape}")
            self.labels = torch.from_numpy(labels.astype(np.int64))
        self.captions: list[str] | None = None
        if captions is not None:
            if captions.shape != (n,) or captions.dtype.kind != "U":
                raise ValueError(f"{path}: {cfg.captions_key!r} must be a unicode string array of shape "
                                 f"({n},), got {captions.dtype} {captions.shape}")
            self.captions = [str(c) for c in captions]

    def _read(self, archive: Any, key: str) -> np.ndarray:
        try:
            return archive[key]
        except ValueError as e:  # object arrays need pickle, which we never allow
            raise ValueError(f"{self.config.path}: key {key!r} holds Python objects (needs pickle, which is "
                             "refused); store plain numeric or unicode arrays") from e

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        path, key = self.config.path, self.config.images_key
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in CHANNELS or images.shape[0] == 0:
            raise ValueError(f"{path}: {key!r} must have shape (N, H, W, C) with N > 0 and C in {CHANNELS} "
                             f"(or (N, H, W)), got {images.shape}")
        if images.dtype.name not in ALLOWED_DTYPES:
            raise ValueError(f"{path}: {key!r} has dtype {images.dtype}; allowed: {', '.join(ALLOWED_DTYPES)}")
        if images.dtype == np.uint8:
            return images
        finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(f"{path}: {key!r} contains NaN or inf, first at index {bad[0]} ({len(bad)} of "
                             f"{len(images)} images)")
        lo, hi = (-1.0, 1.0) if self.config.float_range == "symmetric" else (0.0, 1.0)
        vmin, vmax = float(images.min()), float(images.max())
        if vmin < lo - RANGE_TOLERANCE or vmax > hi + RANGE_TOLERANCE:
            hint = " (use float_range='symmetric')" if vmin < 0 <= lo else ""
            if vmax > 2:
                hint = " (0..255 data should be stored as uint8)"
            raise ValueError(f"{path}: float {key!r} must lie in [{lo:g}, {hi:g}] for float_range="
                             f"{self.config.float_range!r}, got [{vmin:.4g}, {vmax:.4g}]{hint}")
        x = images.astype(np.float32)
        if self.config.float_range == "unit":
            x = x * 2 - 1
        return np.clip(x, -1.0, 1.0)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"npz index {index} out of range for {len(self)} images")
        x = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1)
        image = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float().contiguous()
        item: dict[str, Any] = {"image": image}
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item

    def __repr__(self) -> str:
        return f"NpzDataset({len(self)} images {tuple(self.images.shape[1:])} from {self.config.path!r})"
