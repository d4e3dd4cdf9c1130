"""Generation parameters in a PNG's ``parameters`` text chunk, in AUTOMATIC1111's convention, so that other tools
(and the UI's Info tab) read them back::

    a red circle
    Negative prompt: blurry
    Steps: 9, NFE: 10, Sampler: dpmpp_2m, Schedule: karras, CFG scale: 2, Seed: 7, Size: 32x32, Model hash: 3f2a...,
    Model: shapes   (one line)

The first lines are the prompt (empty for a class or unconditional model), then an optional ``Negative prompt:``
line, then one line of ``Key: value`` fields (a value holding ``,``, ``:`` or ``"`` is JSON-quoted). ``Steps`` is
the sampler's step count, ``NFE`` the denoiser evaluations it costs. Every PNG that ``denoisekit sample`` and the
UI write goes through :func:`save_png_with_info`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..io import write_atomic

#: The tEXt chunk's keyword (what A1111, Fooocus and ComfyUI's readers look for).
PARAMETERS_KEY = "parameters"
PROMPT, NEGATIVE = "Prompt", "Negative prompt"

_FIELD = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def format_parameters(prompt: str, negative_prompt: str | None, fields: Mapping[str, Any]) -> str:
    """The ``parameters`` text: the prompt, ``Negative prompt: ...`` when given, and the fields on one line
    (None values left out)."""
    for key in fields:
        if not _FIELD.fullmatch(f"{key}: x") or key in (PROMPT, NEGATIVE):
            raise ValueError(f"parameter name {key!r}: use letters, digits, spaces, '-' and '/'")
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None)
    negative = f"\n{NEGATIVE}: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


def parse_parameters(text: str) -> dict[str, str]:
    """The ``parameters`` text as ``{"Prompt": ..., "Negative prompt": ... (if any), field: value, ...}``
    (values as text, quotes removed); text without a fields line is a ``ValueError``."""
    *head, last = text.strip("\n").split("\n")
    fields = {m.group(1).strip(): m.group(2) for m in _FIELD.finditer(last) if m.group(0).strip()}
    if "Steps" not in fields and "Seed" not in fields:
        raise ValueError("no generation parameters: the last line has no 'Steps:' or 'Seed:' field")
    out: dict[str, str] = {}
    prompt, negative, in_negative = [], [], False
    for line in head:
        if line.startswith(f"{NEGATIVE}:"):
            in_negative, line = True, line[len(NEGATIVE) + 1:].strip()
        (negative if in_negative else prompt).append(line)
    out[PROMPT] = "\n".join(prompt)
    if in_negative:
        out[NEGATIVE] = "\n".join(negative)
    for key, value in fields.items():
        out[key] = json.loads(value) if value.startswith('"') else value.strip()
    return out


def save_png_with_info(img: Any, path: str | os.PathLike[str], parameters: str | None) -> Path:
    """A PIL image written atomically as a PNG, with ``parameters`` (if any) in its ``parameters`` tEXt chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text(PARAMETERS_KEY, parameters)
    write_atomic(path, lambda p: img.save(p, format="PNG", pnginfo=info))
    return Path(path)


def read_png_info(source: str | os.PathLike[str] | IO[bytes]) -> str | None:
    """The ``parameters`` text of a PNG (a path or a binary file), None when it has none; a file that is not
    an image is a ``ValueError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as img:
            img.load()
            value = getattr(img, "text", {}).get(PARAMETERS_KEY) or img.info.get(PARAMETERS_KEY)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a readable image ({e})") from None
    return str(value) if value else None


def generation_parameters(model: Any, n: int, *, sampler: str, nfe: int, schedule: str, cfg_scale: float,
                          seed: int, size: tuple[int, int], prompts: Sequence[str] | None = None,
                          labels: Sequence[int] | None = None, negative_prompt: str | None = None,
                          cfg_rescale: float = 0.0, extra: Mapping[str, Any] | None = None) -> list[str]:
    """The ``parameters`` text of each of ``n`` images generated from ``model`` (a
    :class:`~denoisekit.generation.LoadedModel`) with these settings: image ``i`` has seed ``seed + i``, its
    prompt or label; ``size`` ``(W, H)`` of the decoded images; ``extra`` fields go before the model's (e.g.
    ``{"Denoising strength": 0.6}``, A1111's img2img field)."""
    from ..samplers.run import steps_for_nfe
    from ..schedules import SCHEDULES

    steps = steps_for_nfe(sampler, nfe) if schedule in SCHEDULES else None
    guided = bool(getattr(model, "guided", False))
    out = []
    for i in range(n):
        label = None if labels is None else int(labels[i])
        fields = {"Steps": steps, "NFE": nfe, "Sampler": sampler, "Schedule": schedule,
                  "CFG scale": float(cfg_scale) if guided else None,
                  "CFG rescale": float(cfg_rescale) if guided and cfg_rescale else None, "Seed": seed + i,
                  "Size": f"{size[0]}x{size[1]}", "Class": label,
                  "Class name": model.classes[label] if label is not None and label < len(model.classes) else None,
                  **dict(extra or {}),
                  "Model hash": (model.sha256 or "")[:10] or None, "Model": Path(str(model.name)).name or None}
        out.append(format_parameters(prompts[i] if prompts else "", negative_prompt, fields))
    return out
