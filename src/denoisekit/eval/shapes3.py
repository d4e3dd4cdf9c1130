"""The FID feature network of the ``shapes3`` dataset (:mod:`denoisekit.data.shapes3`, the course's AFHQ).

The course grades its AFHQ samples by FID in the feature space of a classifier trained on AFHQ. Here the
classifier is a :class:`~denoisekit.eval.features.FeatureClassifier` trained on fresh ``shapes3`` renders with
one head per thing an image of the data varies in: ``kind`` (the class label: first head, so
:func:`~denoisekit.eval.report.evaluate` reports class accuracy and coverage), ``colour``, ``size`` and
``region`` (the shape's centre on a 3x3 grid). Its penultimate features must then separate all four, so the
FID sees a wrong colour mix or a layout bias, not only a wrong class. Trained on first use and cached like the
digits network (:func:`~denoisekit.eval.features.cached_classifier`; about a minute of one CPU core).

:func:`shapes3_reference` draws the held-out real images (another seed than the training data's 0 and the
network's): the reference of the course's FID, and, split in two, its real-vs-real floor.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from ..data.shapes import COLOURS, SIZES, region_index
from ..data.shapes3 import SHAPES3_KINDS, Shapes3Dataset
from ..data.transforms import uint8_to_tensor
from .features import ClassifierConfig, FeatureClassifier, cached_classifier

#: The heads in order, with their numbers of classes; ``kind`` (first) is the dataset's label.
SHAPES3_HEADS: tuple[tuple[str, int], ...] = (("kind", len(SHAPES3_KINDS)), ("colour", len(COLOURS)),
                                             ("size", len(SIZES)), ("region", 9))
#: The network's recipe: 32 pixels (small shapes are 8 pixels wide); no translation (positions are labels), no
#: dropout (as the shapes attribute network, :data:`~denoisekit.eval.alignment.ATTRIBUTE_RECIPES`).
SHAPES3_CONFIG = ClassifierConfig(image_size=32, dropout=0.0, epochs=5, shift=0, test_fraction=0.05)
SHAPES3_TRAIN_IMAGES = 10000
#: Seeds of the network's training renders and of the held-out reference; the course presets train on seed 0.
SHAPES3_FEATURE_SEED, SHAPES3_EVAL_SEED = 3_000_017, 4_000_037


def shapes3_labelled(n: int, seed: int, size: int = 32) -> tuple[Tensor, Tensor]:
    """``n`` renders of ``shapes3`` from ``seed``: images ``(n, 3, size, size)`` in [-1, 1] and their labels
    ``(n, len(SHAPES3_HEADS))`` (kind, colour, size, region)."""
    ds = Shapes3Dataset(length=n, seed=seed, size=size)
    images, labels = [], []
    for i in range(n):
        sample = ds.render(i)
        s = sample.shapes[0]
        images.append(uint8_to_tensor(sample.image))
        labels.append((s.kind, s.colour, s.size, region_index(s.x / size, s.y / size)))
    return torch.stack(images), torch.tensor(np.array(labels), dtype=torch.int64)


def shapes3_reference(n: int = 1000, seed: int = SHAPES3_EVAL_SEED, size: int = 32) -> tuple[Tensor, Tensor]:
    """Held-out real ``shapes3`` images ``(n, 3, size, size)`` and their class labels ``(n,)``."""
    images, labels = shapes3_labelled(n, seed, size)
    return images, labels[:, 0]


def shapes3_feature_network(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> FeatureClassifier:
    """The ``shapes3`` feature network (module docstring), trained on first use and cached; its
    ``label_head`` is 0, the kind."""
    x, y = shapes3_labelled(SHAPES3_TRAIN_IMAGES, SHAPES3_FEATURE_SEED)
    net = cached_classifier("shapes3", x, y, [n for _, n in SHAPES3_HEADS], SHAPES3_CONFIG, cache_dir=cache_dir,
                            verbose=verbose)
    net.label_head = 0
    return net
