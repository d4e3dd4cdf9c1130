"""What the CLIP of :mod:`denoisekit.eval.clip` reads: prompts through the frozen MiniLM, and its training pairs.

:func:`text_features` is the text tower's frozen half: MiniLM token states mean-pooled over the real tokens,
``(N, 384)`` float32, each prompt encoded once per process (and, for a list given ``cache_dir``, once per
machine). A prompt longer than the tower's ``max_tokens`` is cut to it with a warning naming the prompt.

:func:`training_pairs` renders the pairs: ``shapes`` procedural renders with their captions (1 to 3 shapes,
two-shape layouts twice as frequent, as the attribute network is trained) and, when the Noto Color Emoji font
is installed (``emoji: auto``; ``on`` requires it), the emoji train split with its names and keywords
(:mod:`denoisekit.data.emoji`), repeated ``emoji_repeat`` times so the ~1,300 emoji weigh in beside thousands of
shapes. Held-out sets for measuring: :func:`heldout_shapes` (a fresh seed) and :func:`heldout_emoji` (the
emoji test split: emoji the model never saw, so classifying them by name is zero-shot in CLIP's sense).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..io import load_tensors, save_tensors_atomic
from ..models.clip import mean_pool
from .alignment import ATTRIBUTE_COUNT_WEIGHTS, rendered_shapes

#: Seeds of the CLIP's training renders and of the held-out renders it is measured on.
TRAIN_SEED, HELDOUT_SEED = 3_000_017, 4_000_037

_MEMO: dict[tuple[str, int], Tensor] = {}


def warn_long_prompts(prompts: Sequence[str], max_tokens: int) -> None:
    """A warning naming each distinct prompt with more than ``max_tokens`` MiniLM tokens (it is cut)."""
    from ..models.text import get_text_encoder

    distinct = list(dict.fromkeys(prompts))
    counts = get_text_encoder("minilm", max_tokens=max_tokens, cache_size=0).token_counts(distinct)
    for p, count in zip(distinct, counts):
        if count > max_tokens:
            warnings.warn(f"prompt {p!r} has {count} tokens, more than the CLIP text tower's max_tokens="
                          f"{max_tokens}; it is truncated", stacklevel=3)


def text_features(prompts: Sequence[str], max_tokens: int = 32, *, cache_dir: str | os.PathLike | None = None,
                  warn: bool = True) -> Tensor:
    """Mean-pooled frozen MiniLM states ``(N, 384)`` float32 of ``prompts`` (cut to ``max_tokens`` tokens, with
    a warning per long prompt when ``warn``); with ``cache_dir``, the whole list's features are also stored
    there as ``text-<hash>.safetensors`` and read back next time."""
    from ..models.text import check_prompts, get_text_encoder

    prompts = check_prompts(prompts)
    file = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps([max_tokens, prompts]).encode()).hexdigest()[:20]
        file = Path(cache_dir) / f"text-{digest}.safetensors"
        if file.is_file():
            return load_tensors(file)["features"]
    if warn:
        warn_long_prompts(prompts, max_tokens)
    todo = [p for p in dict.fromkeys(prompts) if (p, max_tokens) not in _MEMO]
    if todo:
        enc = get_text_encoder("minilm", max_tokens=max_tokens, cache_size=0)
        for i in range(0, len(todo), 512):
            chunk = todo[i:i + 512]
            context, mask = enc.encode(chunk)
            _MEMO.update({(p, max_tokens): f for p, f in zip(chunk, mean_pool(context, mask))})
    out = torch.stack([_MEMO[(p, max_tokens)] for p in prompts]) if prompts else torch.zeros(0, 384)
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            save_tensors_atomic(file, {"features": out.contiguous()})
        except OSError as e:  # a read-only cache costs the encoding next time, not this result
            warnings.warn(f"cannot write the CLIP text cache {file} ({e})", stacklevel=2)
    return out


def emoji_available() -> bool:
    """Whether the Noto Color Emoji font is installed (where :func:`denoisekit.data.emoji.find_font` looks)."""
    from ..data.emoji import find_font

    try:
        find_font()
    except (FileNotFoundError, ValueError):
        return False
    return True


def emoji_split(split: Literal["train", "test"], size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """The emoji ``split`` at ``size``: uint8 images ``(N, S, S, 3)``, captions (names + keywords) and names."""
    from ..data.emoji import EmojiDataset

    ds = EmojiDataset(size=size, split=split)
    return ds.pixels, list(ds.captions), [ds.classes[int(i)] for i in ds.labels]


def training_pairs(shapes: int, size: int, emoji: Literal["auto", "on", "off"] = "auto", emoji_repeat: int = 4,
                   seed: int = TRAIN_SEED) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """uint8 images ``(N, S, S, 3)``, their captions and what went in (see the module docstring)."""
    images, captions = rendered_shapes(shapes, seed, size, ATTRIBUTE_COUNT_WEIGHTS)
    facts: dict[str, Any] = {"shapes": shapes, "shapes_seed": seed, "emoji": 0}
    if emoji == "on" or (emoji == "auto" and emoji_available()):
        e_images, e_captions, _ = emoji_split("train", size)
        images = np.concatenate([images] + [e_images] * emoji_repeat)
        captions = captions + e_captions * emoji_repeat
        facts["emoji"] = len(e_captions)
    return images, captions, facts


def heldout_shapes(n: int, size: int, max_shapes: int = 3, seed: int = HELDOUT_SEED) -> tuple[np.ndarray, list[str]]:
    """``n`` fresh renders (a seed the CLIP was not trained on) and their captions."""
    return rendered_shapes(n, seed, size, max_shapes=max_shapes)


def heldout_emoji(size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """The emoji test split (never trained on): images, captions with keywords, and names."""
    return emoji_split("test", size)
