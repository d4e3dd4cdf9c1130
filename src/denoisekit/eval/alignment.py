"""Text-to-image alignment on the shapes dataset: does an image show what its prompt says?

Shapes captions come from a fixed grammar (:mod:`denoisekit.data.shapes`), so a prompt is fully checkable:
a multi-head :class:`~denoisekit.eval.features.FeatureClassifier` trained on rendered shapes
(:func:`shapes_attribute_network`, cached like the digits network) reads the image's count, layout and
per-shape kind, colour and size, and :func:`text_alignment` compares them with :func:`parse_caption` of
the prompt, in the spirit of object-level checkers such as GenEval (Ghosh et al. 2023) rather than
embedding similarity (CLIPScore, Hessel et al. 2021): the headline score is the fraction of images whose
every attribute matches, with a match rate per attribute beside it.

Heads (:data:`HEADS`). A two-shape caption names its shapes in the order they were drawn, which an image
cannot show, so the network reads them in a *canonical* order instead: ``first`` and ``last`` along the
relation's axis (left to right or top to bottom); a single shape is both. Every caption maps to these
labels (:func:`caption_labels`): "a A right of a B" is first B, last A on the horizontal axis. Heads:
``count`` (1..3), ``axis`` (two shapes), ``region`` (one shape, 3x3 grid) and the kind, colour and size of
``first`` and ``last``; a head that does not apply is -1 and ignored in training. Prompts of one or two
shapes can be checked; three-shape images teach the count only (with slots for them the small CNN fell to
a 5% ceiling on three-shape captions within its training budget, so they are not judged at all).

Matching one image against a prompt of ``n`` shapes (canonical slots ``P``, predicted slots ``Q``):
``count`` is equal; the slots are paired by the permutation of ``Q`` that matches the most whole shapes
(kind, colour and size together), the identity on ties, and ``kind`` / ``colour`` / ``size`` match if
they do in every pair, so a swapped layout is a position error, not a colour error; ``position`` is the
region for one shape, and for two the axis plus the identity pairing. ``alignment`` needs all five.

Measured on 3000 fresh renders (:func:`alignment_report`), networks trained with :data:`ATTRIBUTE_RECIPES`
in about 100 s of CPU on one thread (of a loaded 2-core machine):

- 32 pixels: every head about one shape 1.0 but its region 0.96-0.97 (each miss has its centre within
  half a pixel of a grid line); two shapes: count 0.999, axis 0.98 (85% of misses within a pixel of the
  diagonal), kind 0.99, colour 0.98-0.99, size 0.995; count of three 0.994. Real renders against their own
  captions (the ceiling) align 0.968 (one shape 0.974, two 0.962; 0.957 on renders showing a held-out
  pair), against shuffled captions (the floor) 0.001.
- 16 pixels: one shape 1.0 but region 0.98; two shapes: axis 0.98, kind 0.98, colour 0.985-0.99, size
  0.99; ceiling 0.967 (one shape 0.971, two 0.963), floor 0.001.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._utils import check_choice
from ..data.shapes import (COLOURS, DEFAULT_HOLDOUT, KINDS, REGION_PHRASES, RELATIONS, SIZES, Caption,
                           CaptionShape, ShapesDataset, held_out_pairs, parse_caption)
from .features import ClassifierConfig, FeatureClassifier, as_images, cached_classifier

MAX_COUNT = 3  # the network counts up to three shapes ...
MAX_PROMPT_SHAPES = 2  # ... and reads the layout and every shape's attributes of up to two
_SLOTS = ("first", "last")
#: The attribute network's heads in order, with their numbers of classes (count: 1..MAX_COUNT shapes).
HEADS: tuple[tuple[str, int], ...] = (
    ("count", MAX_COUNT), ("axis", 2), ("region", len(REGION_PHRASES)),
    *((f"{slot}_{attr}", n) for slot in _SLOTS for attr, n in (("kind", len(KINDS)), ("colour", len(COLOURS)),
                                                                 ("size", len(SIZES)))))
HEAD_NAMES = tuple(name for name, _ in HEADS)
_H = {name: i for i, name in enumerate(HEAD_NAMES)}
ATTRIBUTES = ("count", "kind", "colour", "size", "position")
_COLOUR_NAMES = tuple(COLOURS)

#: Training recipe of the attribute network per resolution, ``(config, number of training renders)``, each
#: about 100 s of CPU on one thread: no translation augmentation (positions are labels) and no dropout (it
#: slowed the two-shape heads most). Images of 32 pixels or more are read at 32 (small shapes are 8 pixels
#: wide); smaller ones at 16, where four times the steps cost the same (at 16 pixels this beat upsampling
#: to 32: ceiling 0.967 against 0.950).
ATTRIBUTE_RECIPES: dict[int, tuple[ClassifierConfig, int]] = {
    32: (ClassifierConfig(image_size=32, dropout=0.0, epochs=5, shift=0, test_fraction=0.02), 20000),
    16: (ClassifierConfig(image_size=16, dropout=0.0, epochs=10, shift=0, test_fraction=0.02), 40000),
}
#: Relative frequencies of 1, 2 and 3 shapes in its training renders: two-shape layouts are the hard part;
#: three-shape images only teach the count.
ATTRIBUTE_COUNT_WEIGHTS = (1.0, 2.0, 1.0)
#: Seeds of the attribute network's training renders and of the default fresh renders that test it; the
#: shapes presets train generative models on seed 0.
ATTRIBUTE_SEED, FRESH_SEED = 1_000_033, 2_000_029


# --- labels ---------------------------------------------------------------------------------------------

def _canonical(c: Caption) -> tuple[int, list[CaptionShape]]:
    """``(axis, shapes in canonical order)`` of a one- or two-shape caption; axis 0 horizontal, 1 vertical,
    -1 for one shape."""
    if c.count == 1:
        return -1, list(c.shapes)
    assert c.count == 2 and c.relation is not None
    axis = 0 if c.relation in ("left of", "right of") else 1
    forward = c.relation in ("left of", "above")
    return axis, list(c.shapes if forward else c.shapes[::-1])


def _shape_labels(s: CaptionShape) -> list[int]:
    return [KINDS.index(s.kind), _COLOUR_NAMES.index(s.colour), SIZES.index(s.size)]


def caption_labels(caption: Caption | str) -> list[int]:
    """The attribute network's label per head (:data:`HEADS`; -1 where a head does not apply) that an image
    of ``caption`` has; of three shapes only the count. ``ValueError`` for an unparseable caption or more
    than MAX_COUNT shapes."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    if not 1 <= c.count <= MAX_COUNT:
        raise ValueError(f"the shapes attribute network counts 1 to {MAX_COUNT} shapes; {c.text()!r} has {c.count}")
    labels = [-1] * len(HEADS)
    labels[_H["count"]] = c.count - 1
    if c.count > MAX_PROMPT_SHAPES:
        return labels
    axis, shapes = _canonical(c)
    labels[_H["axis"]] = axis
    if c.count == 1:
        labels[_H["region"]] = c.region if c.region is not None else -1
    for slot, shape in (("first", shapes[0]), ("last", shapes[-1])):
        i = _H[f"{slot}_kind"]
        labels[i:i + 3] = _shape_labels(shape)
    return labels


# --- the network ----------------------------------------------------------------------------------------

def _network_size(size: int) -> int:
    return 32 if size >= 32 else 16


def rendered_shapes(n: int, seed: int, size: int = 32, count_weights: Sequence[float] | None = None,
                    **options: Any) -> tuple[np.ndarray, list[str]]:
    """``n`` shapes renders (uint8 ``(n, size, size, 3)``) and their captions, deterministic per ``(seed, i)``:
    1..MAX_COUNT shapes of every kind and colour (no holdout) unless ``options`` (ShapesDataset options) say
    otherwise; ``count_weights[k]`` (if given) is the relative frequency of ``k + 1`` shapes."""
    base = {"max_shapes": MAX_COUNT, **options, "length": n, "seed": seed, "size": size, "return_masks": False,
            "label_from": "none"}
    if count_weights is None:
        ds = ShapesDataset(**base)
        samples = [ds.render(i) for i in range(n)]
    else:
        p = np.asarray(count_weights, dtype=np.float64)
        if p.ndim != 1 or len(p) < 1 or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"count_weights must be non-negative weights of 1, 2, ... shapes, got {count_weights}")
        by_count = [ShapesDataset(**{**base, "min_shapes": k + 1, "max_shapes": k + 1}) for k in range(len(p))]
        counts = [np.random.default_rng([seed, i, 7]).choice(len(p), p=p / p.sum()) for i in range(n)]
        samples = [by_count[k].render(i) for i, k in enumerate(counts)]
    return np.stack([s.image for s in samples]), [s.caption for s in samples]


_MEMO: dict[tuple, FeatureClassifier] = {}


def shapes_attribute_network(size: int = 32, *, cache_dir: str | os.PathLike | None = None,
                             config: ClassifierConfig | None = None, n_train: int | None = None,
                             seed: int = ATTRIBUTE_SEED, count_weights: Sequence[float] = ATTRIBUTE_COUNT_WEIGHTS,
                             verbose: bool = False, **options: Any) -> FeatureClassifier:
    """The shapes attribute network (:data:`HEADS`) for ``size`` x ``size`` images: trained on ``n_train``
    renders of every (colour, kind) pair, including the text-to-image holdout (it judges those too), on first
    use and cached (:func:`~denoisekit.eval.features.cached_classifier`); memoised in the process.

    ``config`` and ``n_train`` default to :data:`ATTRIBUTE_RECIPES` (at 32 pixels from a size of 32, else at
    16); ``options`` are ShapesDataset options of the training renders (e.g. ``background="light"``, or
    fewer kinds for a quick test network).
    """
    recipe_config, recipe_n = ATTRIBUTE_RECIPES[_network_size(size)]
    config, n_train = config or recipe_config, n_train or recipe_n
    key = (size, config, n_train, seed, tuple(count_weights), repr(sorted(options.items())),
           os.fspath(cache_dir) if cache_dir is not None else None)
    if key not in _MEMO:
        images, captions = rendered_shapes(n_train, seed, size, count_weights, **options)
        labels = torch.tensor([caption_labels(c) for c in captions])
        _MEMO[key] = cached_classifier(f"shapes{size}-alignment", images, labels, [n for _, n in HEADS], config,
                                       cache_dir=cache_dir, verbose=verbose)
    return _MEMO[key]


@torch.no_grad()
def predict_attributes(network: FeatureClassifier, images: Any, batch_size: int = 256) -> Tensor:
    """Predicted labels ``(N, len(HEADS))`` of ``images`` (uint8 ``(N, H, W, 3)`` or float in [-1, 1])."""
    x = as_images(images, channels=(3,))
    if list(network.num_classes) != [n for _, n in HEADS]:
        raise ValueError(f"network heads {network.num_classes} are not the shapes attribute heads "
                         f"{[n for _, n in HEADS]}; use shapes_attribute_network()")
    return torch.cat([network.predict(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def attribute_accuracy(network: FeatureClassifier, n: int = 3000, seed: int = FRESH_SEED, size: int = 32,
                       **options: Any) -> dict[str, float]:
    """Accuracy of every head on ``n`` fresh renders (over the images where the head applies), the bound on
    the precision of :func:`text_alignment`; keys :data:`HEAD_NAMES`, plus ``"<head>@<count>"`` per count."""
    images, captions = rendered_shapes(n, seed, size, **options)
    labels = torch.tensor([caption_labels(c) for c in captions])
    pred = predict_attributes(network, images)
    out: dict[str, float] = {}
    for name, i in _H.items():
        for count in (None, 1, 2, 3):
            ok = labels[:, i] >= 0
            if count is not None:
                ok &= labels[:, _H["count"]] == count - 1
            if ok.any():
                key = name if count is None else f"{name}@{count}"
                out[key] = float((pred[ok, i] == labels[ok, i]).double().mean())
    return out


# --- alignment ------------------------------------------------------------------------------------------

def prompt_match(pred: Sequence[int], target: Sequence[int]) -> dict[str, bool]:
    """Per-attribute matches (:data:`ATTRIBUTES`) of one image's predicted labels against a prompt's
    (:func:`caption_labels`), as the module docstring describes."""
    pred, target = [int(v) for v in pred], [int(v) for v in target]
    n = target[_H["count"]] + 1
    if n > MAX_PROMPT_SHAPES:
        raise ValueError(f"prompts of 1 to {MAX_PROMPT_SHAPES} shapes can be checked, got labels of {n}")
    slots = _SLOTS[:n]
    want = [target[_H[f"{s}_kind"]:_H[f"{s}_kind"] + 3] for s in slots]
    got = [pred[_H[f"{s}_kind"]:_H[f"{s}_kind"] + 3] for s in slots]
    best = max(itertools.permutations(range(n)),  # max keeps the first (identity) on ties
               key=lambda p: sum(want[i] == got[p[i]] for i in range(n)))
    attrs = {a: all(want[i][j] == got[best[i]][j] for i in range(n)) for j, a in enumerate(("kind", "colour", "size"))}
    if n == 1:
        position = pred[_H["region"]] == target[_H["region"]]
    else:
        identity = sum(want[i] == got[i] for i in range(n)) == sum(want[i] == got[best[i]] for i in range(n))
        position = pred[_H["axis"]] == target[_H["axis"]] and identity
    return {"count": pred[_H["count"]] == target[_H["count"]], **attrs, "position": position}


def text_alignment(images: Any, prompts: Sequence[str], network: FeatureClassifier | None = None, *,
                   batch_size: int = 256) -> dict[str, Any]:
    """How well images show their shapes prompts: ``alignment``, the fraction of images whose predicted
    count, layout and every shape's kind, colour and size match the prompt (module docstring), and the match
    rate of each of :data:`ATTRIBUTES`; ``by_count`` gives ``alignment`` per number of shapes prompted,
    ``per_image`` the boolean matches ``(N,)`` per attribute and ``"alignment"``.

    ``images``: uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in [-1, 1]; ``prompts``: ``N`` captions of
    the shapes grammar with one or two shapes (anything else raises ``ValueError`` naming the prompt, and
    the grammar if it does not parse). ``network`` defaults to :func:`shapes_attribute_network` for the
    images' size (trained on first use: about two minutes on one CPU thread at 32 pixels).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, one per image, not a single str")
    x = as_images(images, channels=(3,))
    prompts = list(prompts)
    if len(prompts) != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} images but {len(prompts)} prompts")
    targets = []
    for p in prompts:  # parse every prompt before any training or inference
        c = parse_caption(p)
        if c.count > MAX_PROMPT_SHAPES:
            raise ValueError(f"prompt {p!r} names {c.count} shapes; text_alignment checks prompts of one or two "
                             "shapes (the attribute network reads the layout of at most two)")
        targets.append(caption_labels(c))
    if network is None:
        network = shapes_attribute_network(min(x.shape[-1], 32))
    pred = predict_attributes(network, x, batch_size).tolist()
    rows = [prompt_match(p, t) for p, t in zip(pred, targets)]
    per_image = {a: torch.tensor([r[a] for r in rows]) for a in ATTRIBUTES}
    per_image["alignment"] = torch.stack([per_image[a] for a in ATTRIBUTES]).all(0)
    counts = torch.tensor([t[_H["count"]] + 1 for t in targets])
    out: dict[str, Any] = {"alignment": float(per_image["alignment"].double().mean())}
    out |= {a: float(per_image[a].double().mean()) for a in ATTRIBUTES}
    out["by_count"] = {int(c): float(per_image["alignment"][counts == c].double().mean()) for c in counts.unique()}
    out["n"], out["per_image"] = len(prompts), per_image
    return out


# --- evaluation prompts ---------------------------------------------------------------------------------

def alignment_prompts(kind: Literal["seen", "unseen"], n: int, seed: int = 0,
                      holdout: Sequence[str] = DEFAULT_HOLDOUT) -> list[str]:
    """``n`` evaluation prompts, alternately one shape (in a random region) and two shapes (in a random
    relation), deterministic per ``(seed, i)``: ``"seen"`` uses only (colour, kind) pairs outside
    ``holdout``; ``"unseen"`` names a held-out pair in every prompt (the other shape of a two-shape prompt
    is any pair), a combination a model trained with that holdout has never seen. Sizes are random."""
    check_choice("alignment prompt kind", kind, ("seen", "unseen"))
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    held = held_out_pairs(tuple(holdout))
    if kind == "unseen" and not held:
        raise ValueError("unseen prompts need at least one held-out (colour, kind) pair")
    seen = [(c, k) for c in _COLOUR_NAMES for k in KINDS if (c, k) not in held]

    def shape(rng: np.random.Generator, pairs: list[tuple[str, str]]) -> CaptionShape:
        colour, k = pairs[rng.integers(len(pairs))]
        return CaptionShape(SIZES[rng.integers(len(SIZES))], colour, k)

    prompts = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0 if kind == "seen" else 1])
        first = shape(rng, seen if kind == "seen" else held)
        if i % 2 == 0:
            caption = Caption((first,), region=int(rng.integers(len(REGION_PHRASES))))
        else:
            pair = [first, shape(rng, seen if kind == "seen" else seen + held)]
            if rng.random() < 0.5:
                pair.reverse()
            caption = Caption(tuple(pair), relation=RELATIONS[rng.integers(len(RELATIONS))])
        prompts.append(caption.text())
    return prompts


def alignment_report(network: FeatureClassifier | None = None, n: int = 2000, seed: int = FRESH_SEED,
                     size: int = 32) -> dict[str, Any]:
    """Attribute accuracy and the ceiling and floor of :func:`text_alignment` on ``n`` fresh renders: with
    their own captions (what a perfect generator scores) and with captions shuffled among them (what an
    image unrelated to its prompt scores)."""
    t0 = time.perf_counter()
    network = network or shapes_attribute_network(size)
    images, captions = rendered_shapes(n, seed, size, max_shapes=MAX_PROMPT_SHAPES)
    shuffled = [captions[i] for i in np.random.default_rng(seed).permutation(n)]
    ceiling, floor = text_alignment(images, captions, network), text_alignment(images, shuffled, network)
    ceiling.pop("per_image"), floor.pop("per_image")
    return {"accuracy": attribute_accuracy(network, n, seed + 1, size), "ceiling": ceiling, "floor": floor,
            "network": dict(network.info), "seconds": time.perf_counter() - t0}


def shapes_feature_network(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> FeatureClassifier:
    """The shapes attribute network at 32 pixels (:func:`shapes_attribute_network`:
    count, layout, kind, colour and size heads), trained on first use and cached."""
    return shapes_attribute_network(32, cache_dir=cache_dir, verbose=verbose)
