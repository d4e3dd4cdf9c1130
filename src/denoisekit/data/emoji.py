"""The emoji of the Noto Color Emoji font, rendered to small RGB images with captions.

The font comes from the system (Debian/Ubuntu: ``apt-get install fonts-noto-color-emoji``) or from
``font=PATH``; this module installs nothing. What is in the dataset is read from the font itself
(with fontTools, which matplotlib already depends on): its character map gives the single-codepoint
emoji and its ligature table (GSUB lookup type 4) the multi-codepoint sequences it draws as one glyph.

Which sequences are kept (``kinds``; an emoji is kept when every feature it has is listed):

=============  =====================================================  ===================================
kind           what                                                   caption (lower-cased)
=============  =====================================================  ===================================
``single``     one codepoint with a name in Python's ``unicodedata``  its Unicode name: "grinning face"
               (so emoji newer than this Python's Unicode and the
               font's private-use glyphs are left out)
``keycap``     ``[0-9#*]`` + U+20E3                                   "keycap " + name: "keycap digit one"
``flag``       two regional indicators, or U+1F3F4 + tag letters      "flag " + code: "flag us",
                                                                      "flag gbsct"
``skin_tone``  an emoji followed by a Fitzpatrick modifier            name + CLDR tone: "waving hand sign,
                                                                      medium skin tone"
``zwj``        emoji joined by U+200D (needs the ``emoji`` package)   that package's CLDR name: "man
                                                                      technologist"
=============  =====================================================  ===================================

ZWJ sequences need the PyPI package ``emoji``: the font lists each of them twice, forwards and
reversed (for right-to-left text), and only a list of the standard sequences says which is which
(and gives them a name better than the components' names strung together). Asking for ``"zwj"``
without it is an ``ImportError``; the other kinds depend on the font and Python alone.

``keywords``: with the ``emoji`` package importable (``"auto"``, the default) or required (``"on"``),
the caption is followed by the emoji's CLDR short name and aliases from that package when they add
words ("heavy black heart, red heart, heart"; "flag us, united states, flag for united states").
``"off"`` keeps captions a function of the font and Python only.

Order: sorted by codepoint sequence, so each emoji's skin-tone variants follow it. ``label`` is the
emoji's index in that order over the whole font (the same in every split; ``classes[label]`` is its
caption without keywords). Splits: ``test_fraction`` of the emoji, chosen by ``seed``, form the test
split (each emoji is its own class, so the split is over emoji, not stratified).

Rendering: Pillow draws the colour bitmaps (CBDT) only at their native size, 109 px, with
``embedded_color=True``; each emoji is drawn there on a transparent canvas, cropped to its alpha
bounding box, centred in a square with ``padding`` of the side on each edge, composited over the
``background`` colour (the "over" operator on the full-resolution image, so edges blend with the
background and not with black) and resized to ``size`` with a Lanczos filter. Renders of every
emoji (all splits) are cached as ``<key>.npz`` (uint8 ``(N, S, S, 3)``) in ``cache_dir`` (default
``<denoisekit cache>/emoji``), keyed by the font file's SHA-256, the options, the list of sequences
and the Pillow version.

Items: ``image`` float32 ``(3, size, size)`` in [-1, 1], ``caption`` str, ``label`` int64 scalar.
``dataset.emoji[i]`` is item ``i``'s sequence as drawn (the font's form, without U+FE0F).
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .._utils import check_choice
from ..io import default_cache_dir, file_sha256, write_atomic
from .transforms import uint8_to_tensor

#: Where the Debian/Ubuntu, Fedora and Arch packages put the font.
FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
              "/usr/share/fonts/google-noto-color-emoji/NotoColorEmoji.ttf",
              "/usr/share/fonts/noto/NotoColorEmoji.ttf")
#: The only size at which the font's colour bitmaps exist (Pillow refuses other sizes).
NATIVE_SIZE = 109
KINDS = ("single", "keycap", "flag", "skin_tone", "zwj")
#: Bump when the rendering changes, so old cache files are not reused.
RENDER_VERSION = 1

ZWJ, VS16, KEYCAP, BLACK_FLAG, CANCEL_TAG = 0x200D, 0xFE0F, 0x20E3, 0x1F3F4, 0xE007F
REGIONAL = range(0x1F1E6, 0x1F1FF + 1)
TAGS = range(0xE0020, 0xE007F + 1)
#: Fitzpatrick modifiers U+1F3FB..1F3FF by their CLDR names.
SKIN_TONES = {0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone", 0x1F3FD: "medium skin tone",
              0x1F3FE: "medium-dark skin tone", 0x1F3FF: "dark skin tone"}
KEYCAP_BASES = frozenset(map(ord, "0123456789#*"))


@dataclass(frozen=True)
class EmojiConfig:
    """Options of :class:`EmojiDataset` (see the module docstring).

    font: path to ``NotoColorEmoji.ttf``; None searches :data:`FONT_PATHS`.
    background: a colour name or ``#rrggbb`` (anything ``PIL.ImageColor`` reads), or an RGB triple 0..255.
    padding: margin around the emoji's bounding box, as a fraction of the output side, on each edge.
    cache_dir: None for the denoisekit cache (``$DENOISEKIT_CACHE`` or ``~/.cache/denoisekit``).
    """

    size: int = 64
    split: Literal["train", "test", "all"] = "train"
    test_fraction: float = 0.1
    seed: int = 0
    kinds: tuple[str, ...] = ("single", "keycap", "flag")
    background: str | tuple[int, int, int] = "white"
    padding: float = 0.05
    keywords: Literal["auto", "on", "off"] = "auto"
    font: str | None = None
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))  # YAML gives lists
        if isinstance(self.background, list):
            object.__setattr__(self, "background", tuple(self.background))
        if not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"emoji: size must be an int >= 8, got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"emoji: seed must be a non-negative int, got {self.seed!r}")
        check_choice("emoji split", self.split, ("train", "test", "all"))
        check_choice("emoji keywords", self.keywords, ("auto", "on", "off"))
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"emoji: test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if not 0.0 <= self.padding < 0.5:
            raise ValueError(f"emoji: padding must be in [0, 0.5), got {self.padding!r}")
        if not self.kinds:
            raise ValueError(f"emoji: kinds must not be empty; allowed: {', '.join(KINDS)}")
        for k in self.kinds:
            check_choice("emoji kind", k, KINDS)
        background_rgb(self.background)  # fail at configuration time


def background_rgb(colour: str | Sequence[int]) -> tuple[int, int, int]:
    """An RGB triple 0..255 from a colour name, ``#rrggbb`` or a triple; ``ValueError`` otherwise."""
    from PIL import ImageColor

    if isinstance(colour, str):
        try:
            rgb = ImageColor.getrgb(colour)
        except ValueError:
            raise ValueError(f"emoji: unknown background colour {colour!r} (a name or '#rrggbb')") from None
        return (rgb[0], rgb[1], rgb[2])
    rgb = tuple(colour)
    if len(rgb) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in rgb):
        raise ValueError(f"emoji: background must be a colour name or three ints in 0..255, got {colour!r}")
    return rgb  # type: ignore[return-value]


def find_font(font: str | os.PathLike | None = None) -> Path:
    """The Noto Color Emoji font file: ``font`` if given, else the first of :data:`FONT_PATHS` that exists."""
    if font is not None:
        path = Path(font).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"emoji: font file {str(path)!r} does not exist")
        return path
    for p in FONT_PATHS:
        if Path(p).is_file():
            return Path(p)
    raise FileNotFoundError(
        "the emoji dataset needs the Noto Color Emoji font, which was not found (looked in "
        f"{', '.join(FONT_PATHS)}). Install it with `apt-get install fonts-noto-color-emoji` (Debian/Ubuntu), "
        "or pass font=PATH to a NotoColorEmoji.ttf.")


# ------------------------------------------------------------------------------------------------
# What the font draws


def font_sequences(path: Path) -> tuple[list[tuple[int, ...]], dict[str, list[tuple[int, ...]]]]:
    """The font's single codepoints (cmap) and, per ligature glyph, the codepoint sequences that the
    GSUB ligature lookups turn into it (all lookups of type 4, also inside extension lookups)."""
    from fontTools.ttLib import TTFont

    with TTFont(str(path), lazy=True) as font:
        cmap = font.getBestCmap()
        glyph_to_cp: dict[str, int] = {}
        for cp in sorted(cmap):
            glyph_to_cp.setdefault(cmap[cp], cp)
        ligatures: dict[str, list[tuple[int, ...]]] = {}
        if "GSUB" in font:
            for lookup in font["GSUB"].table.LookupList.Lookup:
                for sub in lookup.SubTable:
                    sub = getattr(sub, "ExtSubTable", sub)
                    if sub.LookupType != 4:
                        continue
                    for first, ligs in sub.ligatures.items():
                        for lig in ligs:
                            glyphs = [first, *lig.Component]
                            if all(g in glyph_to_cp for g in glyphs):
                                seq = tuple(glyph_to_cp[g] for g in glyphs)
                                ligatures.setdefault(lig.LigGlyph, []).append(seq)
    return [(cp,) for cp in sorted(cmap)], ligatures


def _is_component(cp: int) -> bool:
    """Codepoints that only build sequences (or are plain text): never an emoji on their own."""
    return (cp < 0x80 or cp in (ZWJ, VS16, KEYCAP) or cp in REGIONAL or cp in TAGS or cp in SKIN_TONES
            or unicodedata.category(chr(cp)) == "Co")  # private use: the font's internal glyphs


def sequence_features(seq: tuple[int, ...]) -> frozenset[str] | None:
    """The kinds a sequence belongs to (``{"single"}`` for one emoji codepoint), or None when it is not
    a well-formed emoji: a modifier not following an emoji, a reversed (right-to-left) form, a flag
    without its letters, an unnamed single."""
    if len(seq) == 1:
        cp = seq[0]
        ok = not _is_component(cp) and unicodedata.name(chr(cp), "") != ""
        return frozenset({"single"}) if ok else None
    feats = set()
    if seq[0] in REGIONAL or seq[0] == BLACK_FLAG and len(seq) > 1 and seq[1] in TAGS:
        if len(seq) == 2 and all(c in REGIONAL for c in seq):
            return frozenset({"flag"})
        if len(seq) >= 4 and seq[-1] == CANCEL_TAG and all(c in TAGS for c in seq[1:]):
            return frozenset({"flag"})
        return None
    if len(seq) == 2 and seq[1] == KEYCAP:
        return frozenset({"keycap"}) if seq[0] in KEYCAP_BASES else None
    prev = None
    for cp in seq:
        if cp in SKIN_TONES:
            if prev is None or prev == ZWJ or prev in SKIN_TONES:
                return None  # a modifier must follow the emoji it modifies (this rejects reversed forms)
            feats.add("skin_tone")
        elif cp == ZWJ:
            if prev is None or prev == ZWJ:
                return None
            feats.add("zwj")
        elif _is_component(cp):
            return None
        prev = cp
    return frozenset(feats) if feats and prev != ZWJ else None


def _load_emoji_package(required: bool, why: str) -> Any:
    try:
        import emoji
    except ImportError as e:
        if required:
            raise ImportError(f"the emoji dataset needs the 'emoji' package for {why}: pip install emoji") from e
        return None
    return emoji


def _emoji_package_table(package: Any) -> dict[tuple[int, ...], dict[str, Any]]:
    """The ``emoji`` package's fully-qualified emoji by codepoints without U+FE0F (the font's form)."""
    qualified = package.STATUS["fully_qualified"]
    table = {}
    for text, entry in package.EMOJI_DATA.items():
        if entry.get("status") == qualified:
            table[tuple(ord(c) for c in text if ord(c) != VS16)] = entry
    return table


def _cldr_words(name: str) -> str:
    """``":flag_for_United_States:"`` -> ``"flag for united states"``."""
    return " ".join(name.strip(":").replace("_", " ").split()).lower()


def caption_of(seq: tuple[int, ...], feats: frozenset[str], table: dict[tuple[int, ...], dict[str, Any]] | None) -> str:
    """The caption of a sequence without keywords (see the table in the module docstring)."""
    if "zwj" in feats:
        assert table is not None and seq in table
        return _cldr_words(table[seq]["en"])
    if feats == {"flag"}:  # regional indicators map to a..z; tag characters are ASCII + U+E0000
        if seq[0] in REGIONAL:
            return "flag " + "".join(chr(c - REGIONAL[0] + ord("a")) for c in seq)
        return "flag " + "".join(chr(c - 0xE0000) for c in seq[1:-1]).lower()
    if feats == {"keycap"}:
        return "keycap " + unicodedata.name(chr(seq[0])).lower()
    name = unicodedata.name(chr(seq[0]), "")
    if not name:
        return ""
    tones = [SKIN_TONES[c] for c in seq if c in SKIN_TONES]
    return ", ".join([name.lower(), *tones])


def select_sequences(path: Path, kinds: Sequence[str], table: dict[tuple[int, ...], dict[str, Any]] | None
                     ) -> list[tuple[tuple[int, ...], str]]:
    """``(sequence, caption)`` of every emoji the font draws whose kinds are all in ``kinds``, sorted."""
    singles, ligatures = font_sequences(path)
    wanted, found = set(kinds), {}
    for seq in singles + [s for seqs in ligatures.values() for s in seqs]:
        feats = sequence_features(seq)
        if feats is None or not feats <= wanted:
            continue
        if "zwj" in feats and (table is None or seq not in table):
            continue  # not a standard sequence (typically the reversed form)
        caption = caption_of(seq, feats, table)
        if caption:
            found[seq] = caption
    return sorted(found.items())


def keyword_caption(seq: tuple[int, ...], caption: str, table: dict[tuple[int, ...], dict[str, Any]]) -> str:
    """``caption`` followed by the ``emoji`` package's CLDR name and aliases that add words to it
    (compared without punctuation: "raised fist medium-light skin tone" adds nothing)."""
    entry = table.get(seq)
    if entry is None:
        return caption
    words, seen = [caption], {caption.replace(",", "")}
    for name in [entry.get("en", ""), *entry.get("alias", [])]:
        w = _cldr_words(name)
        if w and w.replace(",", "") not in seen:
            words.append(w)
            seen.add(w.replace(",", ""))
    return ", ".join(words)


# ------------------------------------------------------------------------------------------------
# Rendering


def draw_emoji(text: str, font: Any, background: tuple[int, int, int], padding: float) -> Any:
    """One emoji as an RGB PIL image at the font's native resolution: drawn on a transparent canvas,
    cropped to its alpha box, centred in a square with ``padding``, composited over ``background``."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("RGBA", (int(right - left) + 2, int(bottom - top) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"emoji {text!r} renders empty")
    x0, y0, x1, y1 = box
    n = round(max(x1 - x0, y1 - y0) / (1 - 2 * padding))
    left, top = round((x0 + x1 - n) / 2), round((y0 + y1 - n) / 2)
    square = canvas.crop((left, top, left + n, top + n))  # outside the canvas is transparent
    return Image.alpha_composite(Image.new("RGBA", square.size, (*background, 255)), square).convert("RGB")


def render_emoji(text: str, font: Any, size: int, background: tuple[int, int, int], padding: float) -> np.ndarray:
    """One emoji as uint8 ``(size, size, 3)``: :func:`draw_emoji`, then a Lanczos resize to ``size``."""
    from PIL import Image

    return np.asarray(draw_emoji(text, font, background, padding).resize((size, size), Image.Resampling.LANCZOS))


def render_all(path: Path, texts: Sequence[str], size: int, background: tuple[int, int, int],
               padding: float) -> np.ndarray:
    """uint8 ``(N, size, size, 3)`` renders of ``texts`` (see :func:`render_emoji`)."""
    from PIL import ImageFont, features

    if any(len(t) > 1 for t in texts) and not features.check("raqm"):
        raise RuntimeError("emoji sequences (keycaps, flags, skin tones, ZWJ) need Pillow built with libraqm for "
                           "ligatures; use kinds=('single',) or install a Pillow wheel with raqm")
    font = ImageFont.truetype(str(path), NATIVE_SIZE)
    out = np.empty((len(texts), size, size, 3), dtype=np.uint8)
    for i, t in enumerate(texts):
        out[i] = render_emoji(t, font, size, background, padding)
    return out


def _cache_dir(config: EmojiConfig) -> Path:
    if config.cache_dir is not None:
        return Path(config.cache_dir).expanduser()
    return default_cache_dir() / "emoji"


def cached_renders(config: EmojiConfig, path: Path, texts: Sequence[str]) -> np.ndarray:
    """:func:`render_all`, read from / written to the cache (atomically) when ``config.cache``."""
    import PIL

    rgb = background_rgb(config.background)
    if not config.cache:
        return render_all(path, texts, config.size, rgb, config.padding)
    h = hashlib.sha256()
    h.update(f"{RENDER_VERSION}|{PIL.__version__}|{file_sha256(path)}|{config.size}|{rgb}|{config.padding!r}|"
             .encode())
    h.update("\n".join(texts).encode())
    folder = _cache_dir(config)
    file = folder / f"{h.hexdigest()[:24]}.npz"
    if file.is_file():
        try:
            with np.load(file, allow_pickle=False) as f:
                images = f["images"]
            if images.shape == (len(texts), config.size, config.size, 3) and images.dtype == np.uint8:
                return images
        except (OSError, ValueError, KeyError):
            pass  # unreadable: render again and overwrite
    images = render_all(path, texts, config.size, rgb, config.padding)
    try:  # a read-only or full cache costs a re-render next time, not this dataset
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(file, lambda p: _save_npz(p, images))
    except OSError:
        pass
    return images


def _save_npz(path: Path, images: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, images=images)


def split_emoji(n: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``split`` among ``n`` emoji: the first ``round(test_fraction * n)`` of a
    ``seed``-determined permutation are the test split."""
    if split == "all":
        return np.arange(n)
    test = np.sort(np.random.default_rng(seed).permutation(n)[:round(test_fraction * n)])
    return test if split == "test" else np.setdiff1d(np.arange(n), test)


class EmojiDataset(Dataset):
    """Noto Color Emoji renders with Unicode-name captions (see the module docstring)."""

    Config = EmojiConfig

    def __init__(self, config: EmojiConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or EmojiConfig(), **overrides)
        cfg = self.config
        self.font_path = find_font(cfg.font)
        need = "zwj" in cfg.kinds or cfg.keywords == "on"
        package = _load_emoji_package(need, "ZWJ sequences" if "zwj" in cfg.kinds else "keywords") \
            if need or cfg.keywords == "auto" else None
        table = _emoji_package_table(package) if package is not None else None
        chosen = select_sequences(self.font_path, cfg.kinds, table)
        self.classes: tuple[str, ...] = tuple(c for _, c in chosen)
        #: Which package version the captions' keywords come from (None: captions without keywords).
        self.keywords_source = f"emoji {package.__version__}" if table and cfg.keywords != "off" else None
        # Render every emoji (one cache file for all splits), then keep this split's.
        everything = ["".join(map(chr, s)) for s, _ in chosen]
        idx = split_emoji(len(chosen), cfg.split, cfg.test_fraction, cfg.seed)
        self.pixels: np.ndarray = cached_renders(cfg, self.font_path, everything)[idx]  # uint8 (N, S, S, 3)
        self.emoji: list[str] = [everything[i] for i in idx]
        self.labels = torch.from_numpy(idx.astype(np.int64))  # index over the whole font, as in `classes`
        self.captions: list[str] = [
            keyword_caption(chosen[i][0], self.classes[i], table) if self.keywords_source else self.classes[i]
            for i in idx]

    def __len__(self) -> int:
        return len(self.emoji)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"emoji index {i} out of range for {len(self)} items")
        return {"image": uint8_to_tensor(self.pixels[i]), "caption": self.captions[i], "label": self.labels[i]}

    def __repr__(self) -> str:
        return f"EmojiDataset({len(self)} images, {self.config})"
