"""Where generated images go: a labelled PNG grid, an ``.npz`` of uint8 arrays, or a directory of one PNG per
image (what external FID tools read). Every command and :meth:`~denoisekit.pipelines.generate.Generated.save`
write through these, atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..data.transforms import tensor_to_uint8
from ..io import write_atomic


def is_directory(out: str | os.PathLike[str]) -> bool:
    """An output that is a directory: a name ending in ``/`` or an existing directory."""
    return str(out).endswith(("/", "\\")) or Path(out).is_dir()


def check_output(out: str | os.PathLike[str]) -> Path:
    """``out`` as a Path when it is a ``.png``, an ``.npz`` or a directory; else a ``ValueError`` naming it."""
    path = Path(out)
    if path.suffix.lower() not in (".png", ".npz") and not is_directory(out):
        raise ValueError(f"the output must end in .png or .npz, or be a directory ending in '/', got {path.name!r}")
    return path


def save_each(x: Tensor, out: Path, parameters: Sequence[str | None] | None = None) -> None:
    """Images ``(N, C, H, W)`` in ``[-1, 1]`` as ``out/00000.png, ...`` (grey or RGB, at their own size), image
    ``i`` with ``parameters[i]`` in its PNG info (:mod:`~denoisekit.pipelines.png_info`)."""
    from PIL import Image

    from .png_info import save_png_with_info

    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(tensor_to_uint8(x)):
        img = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im[..., :3])
        save_png_with_info(img, out / f"{i:05d}.png", parameters[i] if parameters is not None else None)


def save_npz(out: Path, **arrays: Any) -> None:
    """An ``.npz`` written atomically: image tensors (4-D, in ``[-1, 1]``) become uint8 ``(N, H, W, C)``, other
    tensors numpy arrays, lists of strings string arrays."""
    def as_array(v: Any) -> np.ndarray:
        if isinstance(v, Tensor):
            return tensor_to_uint8(v) if v.is_floating_point() and v.ndim == 4 else v.detach().cpu().numpy()
        return np.array(v, dtype=str) if isinstance(v, (list, tuple)) else np.asarray(v)

    data = {k: as_array(v) for k, v in arrays.items()}

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez_compressed(f, **data)

    write_atomic(out, write)
