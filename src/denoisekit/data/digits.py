"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes) as a small image dataset.

The images come from the UCI "Optical Recognition of Handwritten Digits" set as bundled with
scikit-learn (``sklearn.datasets.load_digits``, no download): 8x8 greyscale with integer levels
0..16 (0 = background). They are mapped to ``[-1, 1]`` (background -1), optionally resized with an
antialiased bilinear/bicubic filter, and split train/test deterministically (stratified per class).

Items: ``image`` float32 ``(1, size, size)`` in ``[-1, 1]``, ``label`` int64 scalar (the digit),
``caption`` (``"a handwritten digit 3"``) when ``captions=True``, and ``embedding`` when ``embedding_dim``
is set: a fixed random projection of the label, ``onehot(label) @ W`` with ``W (10, L * D)`` drawn
``N(0, 1)`` from ``embedding_seed`` (so every image of a digit has the same vector and the digits' vectors
are nearly orthogonal), shaped ``(D,)``, or ``(L, D)`` with ``embedding_length``: a stand-in for another
encoder's output (the ``embedding`` condition kind). The whole split is also available as tensors
``dataset.images`` ``(N, 1, size, size)`` and ``dataset.labels`` ``(N,)`` for fast batching.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._utils import check_choice
from .transforms import resize_tensor

#: Grey levels in scikit-learn's digits: integers 0..16.
DIGITS_MAX_LEVEL = 16.0
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class DigitsConfig:
    """Options of :class:`DigitsDataset`.

    size: output side in pixels (8 is native; 16 or 32 are resized with ``interpolation``).
    split: ``"train"``, ``"test"`` or ``"all"``; the split is stratified per class, ``test_fraction``
        of each class (rounded) in test, chosen by ``seed``.
    embedding_dim, embedding_length, embedding_seed: the ``embedding`` field (module docstring); none
        without ``embedding_dim``.
    """

    size: int = 8
    split: Literal["train", "test", "all"] = "train"
    test_fraction: float = 0.1
    seed: int = 0
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    captions: bool = False
    embedding_dim: int | None = None
    embedding_length: int | None = None
    embedding_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"digits: size must be a positive int, got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"digits: seed must be a non-negative int, got {self.seed!r}")
        check_choice("digits split", self.split, ("train", "test", "all"))
        check_choice("digits interpolation", self.interpolation, ("bilinear", "bicubic"))
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"digits: test_fraction must be in (0, 1), got {self.test_fraction!r}")
        for name in ("embedding_dim", "embedding_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"digits: {name} must be a positive int or None, got {value!r}")
        if self.embedding_length is not None and self.embedding_dim is None:
            raise ValueError("digits: embedding_length needs embedding_dim (the width D of the embeddings)")


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # an optional dependency; say how to get it
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``split``: per class, a ``seed``-determined permutation whose first
    ``round(test_fraction * n_class)`` members are the test set. Train and test are disjoint and cover all."""
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(round(test_fraction * len(members)))
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    if split == "test":
        return test_idx
    return np.setdiff1d(np.arange(len(labels)), test_idx)


class DigitsDataset(Dataset):
    """The scikit-learn digits as ``[-1, 1]`` single-channel images with labels (see module docstring)."""

    Config = DigitsConfig
    classes = tuple(str(d) for d in range(10))

    def __init__(self, config: DigitsConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or DigitsConfig(), **overrides)
        cfg = self.config
        raw, target = _load_sklearn_digits()
        idx = split_indices(target, cfg.split, cfg.test_fraction, cfg.seed)
        images = torch.from_numpy(raw[idx])[:, None] / DIGITS_MAX_LEVEL * 2 - 1  # (N, 1, 8, 8)
        self.images: Tensor = resize_tensor(images, cfg.size, cfg.interpolation).contiguous()
        self.labels: Tensor = torch.from_numpy(target[idx])
        self.indices = idx  # positions in load_digits(), for provenance
        self.embeddings: Tensor | None = None  # (10, D) or (10, L, D): one per digit
        if cfg.embedding_dim is not None:
            shape = (cfg.embedding_dim,) if cfg.embedding_length is None else (cfg.embedding_length, cfg.embedding_dim)
            g = torch.Generator().manual_seed(cfg.embedding_seed)
            self.embeddings = torch.randn(len(self.classes), *shape, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"digits index {i} out of range for {len(self)} items")
        item: dict[str, Any] = {"image": self.images[i], "label": self.labels[i]}
        if self.config.captions:
            item["caption"] = f"a handwritten digit {DIGIT_NAMES[int(self.labels[i])]}"
        if self.embeddings is not None:
            item["embedding"] = self.embeddings[int(self.labels[i])]
        return item

    def __repr__(self) -> str:
        return f"DigitsDataset({len(self)} images, {self.config})"
