"""Three kinds of shape, one per image: the course's offline stand-in for AFHQ (cat, dog, wildlife).

KAIST CS492D's image assignments train on AFHQ: three classes, one animal per image, graded by FID against
held-out images in the feature space of a classifier of that data. ``shapes3`` gives that structure on a
laptop CPU, with no download: 32x32 images of exactly one shape of three kinds (circle, square, triangle: the
class label, ``label_from="kind"``), each in any of the eight colours, two sizes (jittered) and any position,
on black. It is the shapes renderer (:mod:`denoisekit.data.shapes`) with other defaults, so every shapes option
still applies (``--set data.background=light``, other ``kinds``, ``size: 64``). Its FID feature network is
:func:`denoisekit.eval.shapes3.shapes3_feature_network`; ``length`` 9000 is the assignments' AFHQ training set
(3000 images per class).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .shapes import ShapesConfig, ShapesDataset

#: The three classes, in label order.
SHAPES3_KINDS = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Shapes3Config(ShapesConfig):
    """:class:`~denoisekit.data.shapes.ShapesConfig` with the course's defaults (module docstring)."""

    length: int = 9000
    min_shapes: int = 1
    max_shapes: int = 1
    kinds: tuple[str, ...] = SHAPES3_KINDS
    return_masks: bool = False


class Shapes3Dataset(ShapesDataset):
    """One shape of three kinds per image, labelled by its kind (module docstring)."""

    Config = Shapes3Config

    def __init__(self, config: Shapes3Config | None = None, **overrides: Any) -> None:
        super().__init__(config or Shapes3Config(), **overrides)
