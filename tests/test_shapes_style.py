"""The shapes style (data/shapes.py ``style``, ``style_prob``): additive (the default bit for bit as before, the
layout unchanged when on), drawn as described (outlined: background inside a ring; striped: bands of the colour
and its shade on the pixel grid), captioned and parsed, recorded in items and exports, bad values refused."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from denoisekit.data.shapes import (COLOURS, STRIPE_SHADE, STYLES, ShapesDataset,  # noqa: E402
                                    parse_caption)
from test_dreambooth import GOLDEN, _digest  # noqa: E402  (the digests of the dataset before any option)

LAYOUT = ("count", "kinds", "colours", "sizes", "positions", "background", "label_map", "masks", "edges")


@pytest.mark.parametrize("options,digest", GOLDEN)
def test_solid_is_the_dataset_before_styles_bit_for_bit(options, digest):
    assert _digest(ShapesDataset(**options, style="solid")) == digest
    assert _digest(ShapesDataset(**options, style="solid", style_prob=0.3)) == digest


def _styled_words(caption: str, styles: list[str]) -> str:
    """``caption`` with each shape's style word inserted before its colour (caption order)."""
    c = parse_caption(caption)
    shapes = [type(s)(s.size, s.colour, s.kind, st) for s, st in zip(c.shapes, styles)]
    return type(c)(tuple(shapes), c.region, c.relation, c.order).text()


@pytest.mark.parametrize("style", STYLES[1:])
def test_style_keeps_the_layout_and_changes_only_styled_shapes(style):
    plain = ShapesDataset(size=32, max_shapes=3, background="light")
    some = ShapesDataset(size=32, max_shapes=3, background="light", style=style, style_prob=0.5)
    styled = total = 0
    for i in range(40):
        a, b = plain[i], some[i]
        n = int(a["count"])
        for key in LAYOUT:
            assert torch.equal(a[key], b[key]), key
        names = [STYLES[int(v)] for v in b["styles"][:n]]
        assert (b["styles"][n:] == -1).all() and set(names) <= {"solid", style}
        assert b["caption"] == _styled_words(a["caption"], names)
        total, styled = total + n, styled + names.count(style)
        ra, rb = plain.render(i), some.render(i)
        for k, name in enumerate(names):  # a solid shape's pixels are as before, a styled one's are not
            own = ra.label_map == k + 1
            same = np.array_equal(ra.image[own], rb.image[own])
            assert same == (name == "solid") or own.sum() < 4, (i, k, name)
    assert 0.35 < styled / total < 0.65
    every = ShapesDataset(size=16, style=style, length=20)
    assert all((every[i]["styles"][:int(every[i]["count"])] == STYLES.index(style)).all() for i in range(20))
    never = ShapesDataset(size=16, style=style, style_prob=0.0, length=20)
    solid = ShapesDataset(size=16, length=20)
    for i in range(20):
        assert (never[i]["styles"][:int(never[i]["count"])] == 0).all()
        assert torch.equal(never[i]["image"], solid[i]["image"]) and never[i]["caption"] == solid[i]["caption"]


def _one_large(style: str, bg: str = "black", size: int = 32):
    """The first one-shape image of a large circle or square, rendered solid and in ``style``."""
    kw = dict(size=size, min_shapes=1, max_shapes=1, kinds=("circle", "square"), background=bg, length=200)
    plain, styled = ShapesDataset(**kw), ShapesDataset(**kw, style=style)
    i = next(i for i in range(200) if plain.render(i).shapes[0].size == 1)
    return plain.render(i), styled.render(i)


@pytest.mark.parametrize("size", [32, 64])
def test_outlined_is_a_ring_around_background(size):
    solid, ring = _one_large("outlined", "light", size)
    s = solid.shapes[0]
    inside = ring.image[int(round(s.y - 0.5)), int(round(s.x - 0.5))]
    assert np.abs(inside.astype(int) - solid.background).max() <= 2  # the centre shows the background
    own = solid.label_map == 1
    colour = np.array(COLOURS[ring.caption.split()[3]])
    on_colour = np.all(np.abs(ring.image.astype(int) - colour) < 12, -1) & own
    assert 0.15 < on_colour.sum() / own.sum() < 0.7  # a ring: part, not all, of the silhouette
    assert "outlined" in ring.caption and parse_caption(ring.caption).shapes[0].style == "outlined"


@pytest.mark.parametrize("size", [32, 64])
def test_striped_alternates_colour_and_shade_by_rows(size):
    solid, striped = _one_large("striped", "black", size)
    own = solid.label_map == 1
    colour = np.array(COLOURS[striped.caption.split()[3]])
    shade = np.round(STRIPE_SHADE * colour)
    band = size // 16  # STRIPE_PERIOD / 2 of the side
    for r in np.flatnonzero(own.any(1)):
        row = striped.image[r][own[r]].astype(int)
        want = shade if (r // band) % 2 else colour
        interior = row[1:-1] if len(row) > 2 else row  # the ends are antialiased against the background
        assert np.abs(interior - want).max() <= 2, (r, interior[:3], want)
    assert np.array_equal(solid.label_map, striped.label_map)  # the silhouette is whole


def test_style_captions_parse_and_export(tmp_path):
    ds = ShapesDataset(size=16, max_shapes=3, style="striped", style_prob=0.5, length=30)
    for i in range(30):
        item = ds[i]
        c = parse_caption(item["caption"])
        assert c.text() == item["caption"]
        assert [STYLES.index(s.style) for s in c.shapes] == item["styles"][:int(item["count"])].tolist()
    assert parse_caption("a large striped red circle left of a small blue square").shapes[0].style == "striped"
    assert parse_caption("a small blue square on the left").shapes[0].style == "solid"
    with pytest.raises(ValueError, match="unknown word"):
        parse_caption("a large dotted red circle on the left")
    root = Path(ds.export(tmp_path / "out", n=5))
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    for row, i in zip(rows, range(5)):
        assert [s["style"] for s in row["shapes"]] == [STYLES[int(v)] for v in ds[i]["styles"][:row["count"]]]
    plain_rows = (Path(ShapesDataset(size=16, length=5).export(tmp_path / "plain")) / "metadata.jsonl").read_text()
    assert '"style"' not in plain_rows


def test_subject_keeps_its_pattern_under_a_style():
    both = ShapesDataset(size=32, max_shapes=2, subject=0.5, style="outlined")
    subj = ShapesDataset(size=32, max_shapes=2, subject=0.5)
    seen = 0
    for i in range(40):
        a, b = subj[i], both[i]
        for k in np.flatnonzero(b["subject"].numpy()):
            seen += 1
            assert int(b["styles"][k]) == 0 and " sks star" in b["caption"]
            own = subj.render(i).label_map == k + 1
            assert np.array_equal(subj.render(i).image[own], both.render(i).image[own])
        assert torch.equal(a["positions"], b["positions"])
    assert seen > 5


def test_bad_style_values_are_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown shapes style 'dotted'; allowed: outlined, solid, striped"):
        ShapesDataset(style="dotted")
    with pytest.raises(ValueError, match=r"style_prob must be a probability in \[0, 1\], got 1.5"):
        ShapesDataset(style="striped", style_prob=1.5)
    with pytest.raises(ValueError, match="style_prob"):
        ShapesDataset(style="striped", style_prob="half")
