"""The reference images of an evaluation, from any dataset spec the trainer accepts.

A spec is a built-in dataset name (``digits``, ``shapes``, ``emoji``: any key of
:data:`~denoisekit.data.IMAGE_DATASETS` that needs no path), a folder of images (the ``folder`` dataset),
an ``.npz`` with ``images`` (the ``npz`` dataset) or a run config ``.yaml`` (its ``data`` section). The
dataset is built as the trainer builds it (:func:`~denoisekit.options.build_entry` on the registry entry),
at the samples' size and channels where the dataset has those options, so both sets pass the same resizing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import IMAGE_DATASETS
from ..options import build_entry, option_schema

#: Datasets named by a path rather than by their name alone.
PATH_DATASETS = {"folder": "root", "npz": "path"}
#: Images taken from a procedural dataset (one with a ``length`` option, e.g. shapes) unless ``limit`` is given.
PROCEDURAL_IMAGES = 2000
#: Most images read from any reference set unless ``limit`` is given.
MAX_IMAGES = 10000


@dataclass
class Reference:
    """Reference images ``(N, C, H, W)`` in [-1, 1], their labels ``(N,)`` (``-1``: none) or None, the
    dataset's registry ``dataset`` name and ``name``, how a report shows the spec."""

    images: Tensor
    labels: Tensor | None
    dataset: str
    name: str


def accepted() -> str:
    """What a reference spec may be, for error messages."""
    names = ", ".join(sorted(set(IMAGE_DATASETS) - set(PATH_DATASETS)))
    return f"a built-in dataset ({names}), a folder of images, an .npz with 'images', or a run config .yaml"


def resolve_spec(spec: str | os.PathLike) -> tuple[str, dict[str, Any], str]:
    """``(dataset name, options, display name)`` of a spec; one-line ``ValueError`` listing what is accepted."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if text in IMAGE_DATASETS and text not in PATH_DATASETS and not path.exists():
        return text, {}, text
    if path.is_dir():
        return "folder", {"root": str(path)}, str(path)
    if path.is_file() and path.suffix == ".npz":
        return "npz", {"path": str(path)}, str(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        import yaml

        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        if not isinstance(data, Mapping) or not isinstance(data.get("name", "digits"), str):
            raise ValueError(f"--ref {text}: its 'data' section is not a mapping with a dataset 'name'")
        name = data.get("name", "digits")
        if name not in IMAGE_DATASETS:
            raise ValueError(f"--ref {text}: data.name {name!r} is not an image dataset; allowed: "
                             f"{', '.join(sorted(IMAGE_DATASETS))}")
        flat = {k: v for k, v in data.items() if k not in ("name", "num_workers", "only_labels", "options")}
        return name, {**flat, **(data.get("options") or {})}, f"{name} of {text}"
    if text in PATH_DATASETS:
        raise ValueError(f"--ref {text}: pass the {'folder' if text == 'folder' else '.npz file'} itself; "
                         f"accepted: {accepted()}")
    what = "no such file or folder" if not path.exists() else "not a folder, .npz or .yaml"
    raise ValueError(f"--ref {text!r}: {what}; accepted: {accepted()}")


def load_reference(spec: str | os.PathLike, *, size: int | None = None, channels: int | None = None,
                   limit: int | None = None) -> Reference:
    """The reference set of ``spec`` (see the module docstring), at ``size`` and ``channels`` where the dataset
    takes those options and the spec does not set them; at most ``limit`` images (default: all of a finite
    dataset up to :data:`MAX_IMAGES`, :data:`PROCEDURAL_IMAGES` of a procedural one). Digits and emoji are
    read whole (``split="all"``)."""
    name, options, shown = resolve_spec(spec)
    entry = IMAGE_DATASETS[name]
    fields = set(option_schema(entry)[0])
    defaults = {"size": size, "channels": channels, "split": "all"}
    for key, value in defaults.items():
        if key in fields and key not in options and value is not None:
            options[key] = value
    if "length" in fields and "length" not in options:
        options["length"] = limit or PROCEDURAL_IMAGES
    dataset = build_entry(entry, options)
    n = min(len(dataset), limit or MAX_IMAGES)
    if n < 2:
        raise ValueError(f"--ref {shown}: needs at least 2 images, found {len(dataset)}")
    items = [dataset[i] for i in range(n)]
    images = torch.stack([torch.as_tensor(it["image"]).float() for it in items])
    labels = torch.tensor([int(it.get("label", -1)) for it in items]) if "label" in items[0] else None
    return Reference(images, labels, name, shown)
