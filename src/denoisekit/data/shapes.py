"""A procedural dataset of coloured shapes with full labels, captions, instance masks and edge maps.

Each image shows one to three (``min_shapes``..``max_shapes``) shapes of ``KINDS`` in ``COLOURS``, in
two sizes, on a plain background. Image ``i`` is a pure function of ``(seed, i)``: the dataset can
have any length and item ``i`` never changes with it. Shapes are placed by rejection sampling (at
most ``max_tries`` draws per shape) so that the bounding boxes of two shapes overlap by at most
``max_overlap`` of the smaller box; a shape that cannot be placed is left out (labels always
describe what is drawn). Rendering is done with PIL at ``supersample`` times the resolution into a
palette image of instance ids, then box-filtered down: antialiased images and masks from one pass.

Items (``S`` = size, ``M`` = max_shapes; shape slots are in caption order, unused slots are padding):
  image       float32 (3, S, S) in [-1, 1]
  label       int64 scalar from ``label_from``, naming ``dataset.classes``: the first shape's kind,
              colour or kind * len(colours) + colour, or count - 1; absent for "none"
  caption     e.g. "a large red circle left of a small blue square"
  count       int64 scalar, number of shapes drawn
  kinds, colours, sizes   int64 (M,), indices into ``dataset.kinds`` / ``dataset.colours`` (the
              config's, by default all of KINDS / COLOURS) / SIZES; -1 pads
  positions   float32 (M, 2), shape centres (x, y) as fractions of the side, y downwards; -1 pads
  background  float32 (3,), the background colour in [-1, 1]
  label_map   int64 (S, S): 0 background, k + 1 where slot k is visible (majority of subpixels)
  masks       bool (M, S, S): ``label_map == k + 1``
  edges       float32 (1, S, S): 1 on shape pixels with a 4-neighbour of another label, else 0
(the last three only with ``return_masks=True``). :meth:`ShapesDataset.export` writes them as PNGs.

Captions: one shape, "a {size} {colour} {kind} {where}" with ``where`` from a 3x3 grid ("in the top
left", "on the right", "in the centre", ...); two shapes, "{first} {relation} {second}" with the
relation "left of"/"right of"/"above"/"below" along the axis of larger separation; three or more,
"{a}, {b} and {c} from left to right" (or "from top to bottom", along the axis of larger spread).
:func:`parse_caption` inverts this grammar (:data:`CAPTION_GRAMMAR`) and :meth:`Caption.text` writes it.

Held-out combinations: ``holdout=("red star", ...)`` never draws those (colour, kind) pairs (a shape
that would have one is re-drawn), so a text-to-image model trained on the data has never seen them;
:data:`DEFAULT_HOLDOUT` is the list the text-to-image preset uses. An empty holdout (the default)
leaves every image exactly as before.

A subject for personalisation (DreamBooth, textual inversion): ``subject=p`` makes the first shape of an
image, with probability ``p`` (decided by a generator of its own, so every other draw is as before), *the*
subject: a star with a fixed two-colour pattern (:data:`SUBJECT_COLOURS`: an orange star with a blue disc at
its centre), captioned with ``subject_word`` in the colour's place ("a large sks star on the left"), marked
in the item's ``subject`` (bool (M,), only when ``subject > 0``). ``subject=0`` (the default) is exactly the
dataset without it, so a base trained on it has never seen the pattern.

A style for adaptation (LoRA, fine-tuning): ``style="outlined"`` (a ring of the colour around an interior of
background) or ``style="striped"`` (horizontal stripes of the colour and a dark shade of it,
:data:`STRIPE_SHADE`, each :data:`STRIPE_PERIOD` / 2 of the side thick, on the image's pixel grid: the
silhouette stays whole) draws each shape, with probability ``style_prob`` (decided by a generator of its own,
so the layout and every other draw are as before), in that style; the subject keeps its own pattern.
Captions carry the style word before the colour ("a large striped red circle left of a small blue square"; a
solid shape's caption says nothing), :func:`parse_caption` reads it (:attr:`CaptionShape.style`), and items
hold ``styles`` (int64 (M,), indices into :data:`STYLES`, -1 pads; only when ``style != "solid"``). A styled
shape's mask and edges are those of its silhouette, as if solid. ``style="solid"`` (the default) is exactly
the dataset without styles, so a base trained on it has never seen one.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy.ndimage import distance_transform_edt
from torch.utils.data import Dataset

from .._utils import check_choice
from .transforms import uint8_to_tensor

KINDS = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 210, 30), "green": (40, 170, 70),
    "cyan": (30, 190, 210), "blue": (40, 80, 230), "purple": (150, 60, 200), "pink": (245, 130, 190),
}
SIZES = ("small", "large")
#: Fill styles; "solid" is the base's and is never written in captions.
STYLES = ("solid", "outlined", "striped")
#: An outlined shape's ring width as a fraction of its half-extent (about 1.5 pixels for a large shape at 32).
OUTLINE_WIDTH = 0.25
#: A striped shape's stripe period as a fraction of the image side (4 pixels at 32: two on, two off).
STRIPE_PERIOD = 0.125
#: A striped shape's dark stripes: its colour times this.
STRIPE_SHADE = 0.4
#: Half-extent of a shape's box as a fraction of the image side, per size; jittered by +-SIZE_JITTER.
SIZE_HALF_EXTENT = (0.13, 0.22)
SIZE_JITTER = 0.08
BACKGROUNDS = ("black", "white", "light")
LABEL_FROM = ("kind", "colour", "kind_colour", "count", "none")
MAX_SHAPES_LIMIT = 6
_REGIONS = (("in the top left", "at the top", "in the top right"),
            ("on the left", "in the centre", "on the right"),
            ("in the bottom left", "at the bottom", "in the bottom right"))
#: The 3x3 regions of a one-shape caption, row-major (index = 3 * row + column), as phrases.
REGION_PHRASES = tuple(p for row in _REGIONS for p in row)
#: Two-shape relations: where the first shape lies relative to the second (y downwards).
RELATIONS = ("left of", "right of", "above", "below")
#: Three-or-more-shape orders: the axis the shapes are listed along.
ORDERS = ("from left to right", "from top to bottom")
#: (colour, kind) pairs the text-to-image preset leaves out of training, so that prompts naming them test
#: composition of attributes seen only apart: one per kind, each in a different colour, so every kind and
#: every colour is still seen with five or seven partners.
DEFAULT_HOLDOUT = ("red star", "blue triangle", "green circle", "yellow square", "purple diamond", "cyan cross")
#: The subject (``subject > 0``): a star of the first colour with a disc of the second at its centre.
SUBJECT_KIND, SUBJECT_COLOURS = "star", ("orange", "blue")
#: The disc's radius as a fraction of the star's half-extent.
SUBJECT_DISC = 0.32


@dataclass(frozen=True)
class ShapesConfig:
    """Options of :class:`ShapesDataset` (see the module docstring for what each item holds)."""

    size: int = 32
    length: int = 10000
    seed: int = 0
    min_shapes: int = 1
    max_shapes: int = 3
    kinds: tuple[str, ...] = KINDS
    colours: tuple[str, ...] = tuple(COLOURS)
    background: Literal["black", "white", "light"] = "black"
    label_from: Literal["kind", "colour", "kind_colour", "count", "none"] = "kind"
    supersample: int = 4
    max_overlap: float = 0.1
    max_tries: int = 50
    return_masks: bool = True
    cache: bool = False
    holdout: tuple[str, ...] = ()  # "colour kind" pairs never drawn, e.g. DEFAULT_HOLDOUT
    subject: float = 0.0  # probability that an image's first shape is the subject (module docstring)
    subject_word: str = "sks"  # the subject's word in captions, in the colour's place
    style: Literal["solid", "outlined", "striped"] = "solid"  # STYLES; "solid" is the dataset without styles
    style_prob: float = 1.0  # probability that a (non-subject) shape is drawn in ``style``, else solid

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))  # YAML gives lists
        object.__setattr__(self, "colours", tuple(self.colours))
        object.__setattr__(self, "holdout", (self.holdout,) if isinstance(self.holdout, str) else tuple(self.holdout))
        for name in ("size", "length", "supersample", "max_tries"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"shapes: {name} must be a positive int, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"shapes: seed must be a non-negative int, got {self.seed!r}")
        if self.size < 8:
            raise ValueError(f"shapes: size must be at least 8 pixels, got {self.size}")
        if not 1 <= self.min_shapes <= self.max_shapes <= MAX_SHAPES_LIMIT:
            raise ValueError(f"shapes: need 1 <= min_shapes <= max_shapes <= {MAX_SHAPES_LIMIT}, "
                             f"got {self.min_shapes}, {self.max_shapes}")
        if not self.kinds or not self.colours:
            raise ValueError("shapes: kinds and colours must not be empty")
        for k in self.kinds:
            check_choice("shape kind", k, KINDS)
        for c in self.colours:
            check_choice("shape colour", c, COLOURS)
        if len(set(self.kinds)) != len(self.kinds) or len(set(self.colours)) != len(self.colours):
            raise ValueError("shapes: kinds and colours must not repeat")
        check_choice("shapes background", self.background, BACKGROUNDS)
        check_choice("shapes label_from", self.label_from, LABEL_FROM)
        if not 0.0 <= self.max_overlap <= 1.0:
            raise ValueError(f"shapes: max_overlap must be in [0, 1], got {self.max_overlap!r}")
        if not 0.0 <= self.subject <= 1.0:
            raise ValueError(f"shapes: subject must be a probability in [0, 1], got {self.subject!r}")
        if self.subject > 0 and (SUBJECT_KIND not in self.kinds or SUBJECT_COLOURS[0] not in self.colours):
            raise ValueError(f"shapes: subject > 0 needs kind {SUBJECT_KIND!r} and colour {SUBJECT_COLOURS[0]!r} "
                             f"among kinds and colours")
        check_choice("shapes style", self.style, STYLES)
        if not isinstance(self.style_prob, (int, float)) or not 0.0 <= self.style_prob <= 1.0:
            raise ValueError(f"shapes: style_prob must be a probability in [0, 1], got {self.style_prob!r}")
        if not re.fullmatch(r"[a-z0-9<>_-]+", self.subject_word or ""):
            raise ValueError(f"shapes: subject_word must be one lower-case word, got {self.subject_word!r}")
        held = held_out_pairs(self.holdout)
        if len(set(held)) != len(held):
            raise ValueError(f"shapes: holdout pairs must not repeat, got {list(self.holdout)}")
        if all((c, k) in held for k in self.kinds for c in self.colours):
            raise ValueError(f"shapes: holdout {list(self.holdout)} leaves no (colour, kind) pair of kinds "
                             f"{list(self.kinds)} and colours {list(self.colours)} to draw")


def held_out_pairs(holdout: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``[(colour, kind), ...]`` from "colour kind" strings ("red star"), checked against COLOURS and KINDS."""
    pairs = []
    for entry in holdout:
        words = entry.split() if isinstance(entry, str) else []
        if len(words) != 2:
            raise ValueError(f"shapes: a holdout entry is a 'colour kind' string such as 'red star', got {entry!r}")
        pairs.append((check_choice("holdout colour", words[0], COLOURS), check_choice("holdout kind", words[1], KINDS)))
    return pairs


@dataclass
class ShapeSpec:
    """One drawn shape: indices into the config's kinds/colours and SIZES, centre and half-extent in pixels."""

    kind: int
    colour: int
    size: int
    x: float
    y: float
    half: float
    subject: bool = False  # the subject of ``subject > 0`` (its pattern drawn over the star)
    style: int = 0  # index into STYLES


@dataclass
class ShapesSample:
    """A rendered image: ``image`` uint8 (S, S, 3), ``label_map`` uint8 (S, S), shapes in caption order."""

    image: np.ndarray
    label_map: np.ndarray
    shapes: list[ShapeSpec]
    background: tuple[int, int, int]
    caption: str = ""


def _outline(kind: str, x: float, y: float, h: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of ``kind`` centred at (x, y) within the box of half-extent h; None for a circle."""
    if kind == "circle":
        return None
    if kind == "square":
        a = 0.88 * h  # about a circle's area, so "large" means the same for every kind
        return [(x - a, y - a), (x + a, y - a), (x + a, y + a), (x - a, y + a)]
    if kind == "triangle":
        return [(x, y - h), (x + h, y + h), (x - h, y + h)]
    if kind == "diamond":
        return [(x, y - h), (x + h, y), (x, y + h), (x - h, y)]
    if kind == "star":
        pts = []
        for i in range(10):
            r = h if i % 2 == 0 else 0.45 * h
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((x + r * math.cos(a), y + r * math.sin(a) + 0.1 * h))  # centre the star's box
        return pts
    if kind == "cross":
        w = 0.36 * h
        return [(x - w, y - h), (x + w, y - h), (x + w, y - w), (x + h, y - w), (x + h, y + w),
                (x + w, y + w), (x + w, y + h), (x - w, y + h), (x - w, y + w), (x - h, y + w),
                (x - h, y - w), (x - w, y - w)]
    raise AssertionError(kind)


def _box_overlap(a: ShapeSpec, b: ShapeSpec) -> float:
    """Intersection area of two shapes' boxes over the smaller box's area."""
    w = min(a.x + a.half, b.x + b.half) - max(a.x - a.half, b.x - b.half)
    h = min(a.y + a.half, b.y + b.half) - max(a.y - a.half, b.y - b.half)
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / (4 * min(a.half, b.half) ** 2)


def region_index(x: float, y: float) -> int:
    """The 3x3 cell (``3 * row + column``, row-major from the top left) of a centre at normalised (x, y)."""
    return 3 * min(int(y * 3), 2) + min(int(x * 3), 2)


def region_phrase(x: float, y: float) -> str:
    """Where a centre at normalised (x, y) lies on a 3x3 grid, as a phrase ("in the top left")."""
    return REGION_PHRASES[region_index(x, y)]


def relation_phrase(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centre ``a`` lies relative to ``b`` along the axis of larger separation (y downwards)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def caption_order(positions: list[tuple[float, float]]) -> tuple[list[int], str]:
    """For three or more shapes: the order to list them in (along the axis of larger spread) and its
    phrase; fewer shapes keep their order."""
    if len(positions) < 3:
        return list(range(len(positions))), ""
    xs, ys = [p[0] for p in positions], [p[1] for p in positions]
    if max(xs) - min(xs) >= max(ys) - min(ys):
        return sorted(range(len(xs)), key=lambda i: xs[i]), "from left to right"
    return sorted(range(len(ys)), key=lambda i: ys[i]), "from top to bottom"


def make_caption(words: list[tuple[str, ...]], positions: list[tuple[float, float]]) -> str:
    """The caption of shapes given as (size, colour, kind) or (size, colour, kind, style) words and
    normalised centres, in caption order."""
    shapes = tuple(CaptionShape(*w) for w in words)
    if len(shapes) == 1:
        return Caption(shapes, region=region_index(*positions[0])).text()
    if len(shapes) == 2:
        return Caption(shapes, relation=relation_phrase(positions[0], positions[1])).text()
    return Caption(shapes, order=caption_order(positions)[1]).text()


@dataclass(frozen=True)
class CaptionShape:
    """One shape of a caption, as words: a size of SIZES, a colour of COLOURS, a kind of KINDS, a style of
    STYLES (written before the colour unless "solid")."""

    size: str
    colour: str
    kind: str
    style: str = "solid"

    def text(self) -> str:
        style = "" if self.style == "solid" else f"{self.style} "
        return f"a {self.size} {style}{self.colour} {self.kind}"


@dataclass(frozen=True)
class Caption:
    """What a caption says: its shapes in caption order and, by count, exactly one of ``region`` (one
    shape: index into REGION_PHRASES), ``relation`` (two: one of RELATIONS, the first relative to the
    second) or ``order`` (three or more: one of ORDERS)."""

    shapes: tuple[CaptionShape, ...]
    region: int | None = None
    relation: str | None = None
    order: str | None = None

    @property
    def count(self) -> int:
        return len(self.shapes)

    def text(self) -> str:
        """The caption in the dataset's grammar (the inverse of :func:`parse_caption`)."""
        descs = [s.text() for s in self.shapes]
        if self.count == 1 and self.region is not None:
            return f"{descs[0]} {REGION_PHRASES[self.region]}"
        if self.count == 2 and self.relation is not None:
            return f"{descs[0]} {self.relation} {descs[1]}"
        if self.count >= 3 and self.order is not None:
            return f"{', '.join(descs[:-1])} and {descs[-1]} {self.order}"
        raise ValueError(f"a caption of {self.count} shape(s) needs "
                         + ("a region" if self.count == 1 else "a relation" if self.count == 2 else "an order")
                         + f", got {self}")


CAPTION_GRAMMAR = (
    "captions are lower-case and take one of three forms: "
    "'<shape> <where>' (one shape), '<shape> <relation> <shape>' (two), "
    "'<shape>, <shape>, ... and <shape> <order>' (three or more); "
    "<shape> = 'a <size> [<style>] <colour> <kind>' with size in {" + ", ".join(SIZES) + "}, style in {"
    + ", ".join(STYLES[1:]) + "} (none: solid), colour in {"
    + ", ".join(COLOURS) + "}, kind in {" + ", ".join(KINDS) + "}; <where> in {" + ", ".join(REGION_PHRASES)
    + "}; <relation> in {" + ", ".join(RELATIONS) + "}; <order> in {" + ", ".join(ORDERS) + "}"
)
_SHAPE_RE = re.compile(
    rf"a ({'|'.join(SIZES)}) (?:({'|'.join(STYLES[1:])}) )?({'|'.join(COLOURS)}) ({'|'.join(KINDS)})")
_WORDS = frozenset(" ".join((*SIZES, *STYLES[1:], *COLOURS, *KINDS, *REGION_PHRASES, *RELATIONS, *ORDERS, "a")).split())


def parse_caption(caption: str) -> Caption:
    """What a caption of the shapes grammar says (:class:`Caption`); exactly inverts :func:`make_caption`.

    Case and runs of white space are ignored. Anything outside the grammar raises ``ValueError`` naming the
    caption, the unknown words if any, and the grammar (:data:`CAPTION_GRAMMAR`).
    """
    if not isinstance(caption, str):
        raise TypeError(f"a shapes caption is a str, got {type(caption).__name__}")
    text = " ".join(caption.lower().split())

    def shapes(*parts: str) -> tuple[CaptionShape, ...] | None:
        matches = [_SHAPE_RE.fullmatch(p) for p in parts]
        if not all(matches):
            return None
        return tuple(CaptionShape(size, colour, kind, style or "solid")
                     for size, style, colour, kind in (m.groups() for m in matches))

    for i, phrase in enumerate(REGION_PHRASES):
        if text.endswith(" " + phrase) and (one := shapes(text[:-len(phrase) - 1])):
            return Caption(one, region=i)
    for relation in RELATIONS:
        first, sep, second = text.partition(f" {relation} ")
        if sep and (two := shapes(first, second)):
            return Caption(two, relation=relation)
    for order in ORDERS:
        if text.endswith(" " + order):
            head, sep, last = text[:-len(order) - 1].rpartition(" and ")
            parts = head.split(", ")
            if sep and len(parts) >= 2 and (many := shapes(*parts, last)):
                return Caption(many, order=order)
    unknown = sorted({w for w in text.replace(",", " ").split() if w not in _WORDS})
    why = f"unknown word(s) {', '.join(map(repr, unknown))}; " if unknown else ""
    raise ValueError(f"cannot parse {caption!r} as a shapes caption: {why}{CAPTION_GRAMMAR}")


class ShapesDataset(Dataset):
    """Procedural coloured shapes, deterministic from ``(seed, index)`` (see the module docstring)."""

    Config = ShapesConfig

    def __init__(self, config: ShapesConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or ShapesConfig(), **overrides)
        cfg = self.config
        self.kinds, self.colours = cfg.kinds, cfg.colours
        self._palette = [COLOURS[c] for c in cfg.colours]
        if cfg.label_from == "kind":
            self.classes: tuple[str, ...] = cfg.kinds
        elif cfg.label_from == "colour":
            self.classes = cfg.colours
        elif cfg.label_from == "kind_colour":
            self.classes = tuple(f"{c} {k}" for k in cfg.kinds for c in cfg.colours)
        elif cfg.label_from == "count":
            self.classes = tuple(str(n) for n in range(1, cfg.max_shapes + 1))
        else:
            self.classes = ()
        self._cache: dict[int, ShapesSample] = {}
        self._held = {(cfg.kinds.index(k), cfg.colours.index(c)) for c, k in held_out_pairs(cfg.holdout)
                      if k in cfg.kinds and c in cfg.colours}
        S, ss = cfg.size, cfg.supersample
        rows = np.arange(S * ss) // ss
        self._pixel_keys = ((rows[:, None] * S + rows[None, :]) * (cfg.max_shapes + 1)).ravel()

    def __len__(self) -> int:
        return self.config.length

    # -- sampling and rendering -------------------------------------------------------------------
    def _layout(self, index: int) -> tuple[tuple[int, int, int], list[ShapeSpec]]:
        cfg, S = self.config, self.config.size
        rng = np.random.default_rng([cfg.seed, index])
        if cfg.background == "black":
            bg = (0, 0, 0)
        elif cfg.background == "white":
            bg = (255, 255, 255)
        else:
            bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
        pick = lambda n: min(int(rng.random() * n), n - 1)  # noqa: E731  (cheaper than rng.integers)
        count = cfg.min_shapes + pick(cfg.max_shapes - cfg.min_shapes + 1)
        placed: list[ShapeSpec] = []
        for _ in range(count):
            kind, colour, size = pick(len(cfg.kinds)), pick(len(cfg.colours)), pick(len(SIZES))
            while (kind, colour) in self._held:  # rejection: uniform over the allowed pairs
                kind, colour = pick(len(cfg.kinds)), pick(len(cfg.colours))
            for attempt in range(cfg.max_tries):
                if attempt == cfg.max_tries // 2:
                    size = 0  # crowded: try the rest as a small shape before leaving it out
                half = SIZE_HALF_EXTENT[size] * S * (1 + SIZE_JITTER * (2 * rng.random() - 1))
                x, y = half + (S - 2 * half) * rng.random(), half + (S - 2 * half) * rng.random()
                cand = ShapeSpec(kind, colour, size, x, y, half)
                if all(_box_overlap(cand, p) <= cfg.max_overlap for p in placed):
                    placed.append(cand)
                    break
        if cfg.subject > 0 and placed and np.random.default_rng([cfg.seed, index, 7]).random() < cfg.subject:
            placed[0] = replace(placed[0], kind=cfg.kinds.index(SUBJECT_KIND),
                                colour=cfg.colours.index(SUBJECT_COLOURS[0]), subject=True)
        if cfg.style != "solid":
            styled = np.random.default_rng([cfg.seed, index, 11]).random(len(placed)) < cfg.style_prob
            placed = [replace(p, style=STYLES.index(cfg.style)) if hit and not p.subject else p
                      for p, hit in zip(placed, styled)]
        order, _ = caption_order([(p.x, p.y) for p in placed])
        return bg, [placed[i] for i in order]

    def render(self, index: int) -> ShapesSample:
        """Render image ``index`` (uint8 arrays and its shape list); memoised when ``cache=True``."""
        if not 0 <= index < len(self):
            raise IndexError(f"shapes index {index} out of range for length {len(self)}")
        if index in self._cache:
            return self._cache[index]
        cfg, S, ss = self.config, self.config.size, self.config.supersample
        bg, shapes = self._layout(index)
        # Draw instance ids (0 = background, k + 1 = slot k) once into a palette image whose palette holds
        # the colours: the RGB image and the masks come from the same subpixels.
        canvas = Image.new("P", (S * ss, S * ss), 0)
        palette = list(bg) + [v for s in shapes for v in self._palette[s.colour]]
        canvas.putpalette(palette + [0] * (768 - len(palette)))
        # Large shapes first so small ones stay visible; slots keep caption order.
        for k in sorted(range(len(shapes)), key=lambda k: -shapes[k].size):
            self._draw_shape(canvas, shapes[k], k + 1)
        if any(s.subject or s.style for s in shapes):  # patterns, each on its own shape's subpixels only
            rgb = np.array(canvas.convert("RGB"))
            ids = np.asarray(canvas)
            for k, s in enumerate(shapes):
                if s.style:
                    shade = [round(STRIPE_SHADE * v) for v in self._palette[s.colour]]
                    ink = bg if STYLES[s.style] == "outlined" else shade
                    rgb[self._style_mask(s, canvas.size) & (ids == k + 1)] = ink
                if s.subject:
                    disc = Image.new("L", canvas.size, 0)
                    cx, cy, r = s.x * ss - 0.5, s.y * ss - 0.5 + 0.1 * s.half * ss, SUBJECT_DISC * s.half * ss
                    ImageDraw.Draw(disc).ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
                    rgb[(np.asarray(disc) > 0) & (ids == k + 1)] = COLOURS[SUBJECT_COLOURS[1]]
            image = np.asarray(Image.fromarray(rgb).reduce(ss))
        else:
            image = np.asarray(canvas.convert("RGB").reduce(ss))  # box filter = exact subpixel average
        # Subpixel count of every id in every output pixel, by one bincount over (pixel, id) keys.
        K = cfg.max_shapes + 1
        keys = self._pixel_keys + np.asarray(canvas).ravel()
        coverage = np.bincount(keys, minlength=S * S * K).reshape(S, S, K)
        label_map = coverage.argmax(-1).astype(np.uint8)  # ties go to the lower id (background)
        words = [(SIZES[s.size], cfg.subject_word if s.subject else cfg.colours[s.colour], cfg.kinds[s.kind],
                  STYLES[s.style]) for s in shapes]
        caption = make_caption(words, [(s.x / S, s.y / S) for s in shapes])
        sample = ShapesSample(image, label_map, shapes, bg, caption)
        if cfg.cache:
            self._cache[index] = sample
        return sample

    def _draw_shape(self, canvas: Image.Image, s: ShapeSpec, fill: int) -> None:
        """Fill shape ``s``'s silhouette with value ``fill`` on the supersampled ``canvas``."""
        ss = self.config.supersample
        cx, cy, h = s.x * ss - 0.5, s.y * ss - 0.5, s.half * ss  # pixel centres at integer coordinates
        outline = _outline(self.config.kinds[s.kind], cx, cy, h)
        draw = ImageDraw.Draw(canvas)
        if outline is None:
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
        else:
            draw.polygon(outline, fill=fill)

    def _style_mask(self, s: ShapeSpec, canvas_size: tuple[int, int]) -> np.ndarray:
        """Bool (H, W) of supersampled pixels that shape ``s``'s style paints over: the interior further than
        OUTLINE_WIDTH * half-extent from the silhouette's edge ("outlined", with the background), or every
        other band of STRIPE_PERIOD / 2 of the side, in whole output pixels ("striped", with the shade)."""
        cfg, ss = self.config, self.config.supersample
        if STYLES[s.style] == "outlined":
            alone = Image.new("L", canvas_size, 0)
            self._draw_shape(alone, s, 1)
            return distance_transform_edt(np.asarray(alone)) > OUTLINE_WIDTH * s.half * ss
        assert STYLES[s.style] == "striped", s.style
        band = max(1, round(STRIPE_PERIOD * cfg.size / 2)) * ss
        rows = (np.arange(canvas_size[1]) // band) % 2 == 1
        return np.broadcast_to(rows[:, None], (canvas_size[1], canvas_size[0]))

    # -- torch items --------------------------------------------------------------------------------
    def _class_label(self, shapes: list[ShapeSpec]) -> int:
        cfg, first = self.config, shapes[0]
        if cfg.label_from == "kind":
            return first.kind
        if cfg.label_from == "colour":
            return first.colour
        if cfg.label_from == "kind_colour":
            return first.kind * len(cfg.colours) + first.colour
        return len(shapes) - 1  # "count"; a shape left out by placement can make it < min_shapes

    def __getitem__(self, index: int) -> dict[str, Any]:
        cfg, S, M = self.config, self.config.size, self.config.max_shapes
        sample = self.render(int(index))
        n = len(sample.shapes)
        attrs = np.full((3, M), -1, dtype=np.int64)  # kinds, colours, sizes; -1 pads unused slots
        positions = np.full((M, 2), -1.0, dtype=np.float32)
        for k, s in enumerate(sample.shapes):
            attrs[:, k] = (s.kind, s.colour, s.size)
            positions[k] = (s.x / S, s.y / S)
        attrs_t = torch.from_numpy(attrs)
        item: dict[str, Any] = {
            "image": uint8_to_tensor(sample.image),
            "caption": sample.caption,
            "count": torch.tensor(n, dtype=torch.int64),
            "kinds": attrs_t[0], "colours": attrs_t[1], "sizes": attrs_t[2],
            "positions": torch.from_numpy(positions),
            "background": torch.tensor(sample.background, dtype=torch.float32) / 127.5 - 1,
        }
        if cfg.style != "solid":
            item["styles"] = torch.tensor([sample.shapes[k].style if k < n else -1 for k in range(M)])
        if cfg.subject > 0:
            item["subject"] = torch.tensor([k < n and sample.shapes[k].subject for k in range(M)])
        if cfg.label_from != "none" and n > 0:
            item["label"] = torch.tensor(self._class_label(sample.shapes), dtype=torch.int64)
        if cfg.return_masks:
            lm = torch.from_numpy(sample.label_map.astype(np.int64))
            item["label_map"] = lm
            item["masks"] = lm[None] == torch.arange(1, M + 1)[:, None, None]
            item["edges"] = torch.from_numpy(edge_map(sample.label_map)[None].astype(np.float32))
        return item

    def export(self, directory: str | os.PathLike, n: int | None = None, start: int = 0) -> str:
        """Write items ``start .. start+n`` as ``images/``, ``masks/`` (label maps: pixel value = slot + 1),
        ``edges/`` (0/255) PNGs and a ``metadata.jsonl`` (Hugging Face imagefolder convention: ``file_name``
        and ``text``, plus ``mask_file_name``, ``edge_file_name`` and every shape attribute); returns the
        directory. The config is saved as ``config.json``."""
        n = len(self) - start if n is None else n
        if n < 0 or start < 0 or start + n > len(self):
            raise ValueError(f"export range start={start}, n={n} is outside 0..{len(self)}")
        root = os.fspath(directory)
        for sub in ("images", "masks", "edges"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        S = self.config.size
        with open(os.path.join(root, "metadata.jsonl"), "w", encoding="utf-8") as meta:
            for i in range(start, start + n):
                sample = self.render(i)
                name = f"{i:06d}.png"
                Image.fromarray(sample.image, "RGB").save(os.path.join(root, "images", name))
                Image.fromarray(sample.label_map, "L").save(os.path.join(root, "masks", name))
                edges = edge_map(sample.label_map)
                Image.fromarray((edges * 255).astype(np.uint8), "L").save(os.path.join(root, "edges", name))
                row = {
                    "file_name": f"images/{name}", "text": sample.caption, "index": i,
                    "mask_file_name": f"masks/{name}", "edge_file_name": f"edges/{name}",
                    "count": len(sample.shapes), "background": list(sample.background),
                    "shapes": [{"id": k + 1, "kind": self.kinds[s.kind], "colour": self.colours[s.colour],
                                "size": SIZES[s.size], "x": round(s.x / S, 5), "y": round(s.y / S, 5),
                                "extent": round(2 * s.half / S, 5)}
                               | ({"style": STYLES[s.style]} if self.config.style != "solid" else {})
                               for k, s in enumerate(sample.shapes)],
                }
                meta.write(json.dumps(row) + "\n")
        with open(os.path.join(root, "config.json"), "w", encoding="utf-8") as f:
            json.dump(asdict(self.config), f, indent=2)
        return root

    def __repr__(self) -> str:
        return f"ShapesDataset({len(self)} images, {self.config})"


def edge_map(label_map: np.ndarray) -> np.ndarray:
    """Boolean (H, W): shape pixels (label > 0) with a 4-neighbour of a different label."""
    lm = label_map
    diff = np.zeros(lm.shape, dtype=bool)
    vertical, horizontal = lm[1:] != lm[:-1], lm[:, 1:] != lm[:, :-1]
    diff[1:] |= vertical
    diff[:-1] |= vertical
    diff[:, 1:] |= horizontal
    diff[:, :-1] |= horizontal
    return diff & (lm > 0)
