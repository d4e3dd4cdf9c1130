"""Image helpers shared by the image datasets: PIL mode normalisation, resize + centre-crop, [-1, 1] tensors.

Every image dataset yields ``image`` as a float32 ``(C, H, W)`` tensor in ``[-1, 1]``; the functions
here are the one place that maps pixels to that range and back. Decoding a user's file goes
``normalise_mode`` (EXIF, alpha, palette, 16-bit, CMYK -> a plain 8-bit or float image) ->
``resize_center_crop`` (antialiased, in PIL) -> ``pil_to_tensor``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .._utils import check_choice

#: Modes PIL opens high-bit-depth files in (16-bit PNG/TIFF, 32-bit int, float TIFF).
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_signed(x: Tensor) -> Tensor:
    """Map ``[0, 1]`` to ``[-1, 1]``."""
    return x * 2 - 1


def uint8_to_tensor(array: np.ndarray) -> Tensor:
    """A ``(H, W, C)`` or ``(H, W)`` uint8 array -> float32 ``(C, H, W)`` tensor in ``[-1, 1]``."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if not array.flags.writeable:  # e.g. np.asarray of a PIL image; torch wants to own writable memory
        array = array.copy()
    t = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
    return t / 127.5 - 1


def tensor_to_uint8(x: Tensor) -> np.ndarray:
    """A ``(C, H, W)`` or ``(B, C, H, W)`` tensor in ``[-1, 1]`` -> uint8 ``(H, W, C)`` / ``(B, H, W, C)``,
    rounded to nearest and clipped (the inverse of :func:`uint8_to_tensor` on its image)."""
    y = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return y.movedim(-3, -1).numpy()


def resize_tensor(x: Tensor, size: int | tuple[int, int],
                  mode: Literal["bilinear", "bicubic"] = "bilinear") -> Tensor:
    """Resize ``(C, H, W)`` or ``(B, C, H, W)`` images with antialiasing (a proper low-pass when shrinking);
    the result is clamped to the input's range so bicubic overshoot cannot leave ``[-1, 1]``."""
    check_choice("interpolation", mode, ("bilinear", "bicubic"))
    hw = (size, size) if isinstance(size, int) else tuple(size)
    batched = x.ndim == 4
    y = x if batched else x[None]
    if tuple(y.shape[-2:]) != hw:
        y = F.interpolate(y, size=hw, mode=mode, antialias=True, align_corners=False)
        y = y.clamp(float(x.min()), float(x.max()))
    return y if batched else y[0]


def hflip(x: Tensor) -> Tensor:
    """Mirror ``(..., H, W)`` images left-right."""
    return x.flip(-1)


def flip_decision(seed: int, epoch: int, index: int, p: float) -> bool:
    """Whether item ``index`` is flipped in ``epoch``: a pure function of ``(seed, epoch, index)``, so the
    same in every DataLoader worker, process and resumed run (no shared generator state)."""
    if p <= 0:
        return False
    u = np.random.default_rng([seed, epoch, index]).random()
    return bool(u < p)


def _composite_on_white(img: Image.Image) -> Image.Image:
    """An ``RGBA`` image composited over opaque white, as ``RGB``."""
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def normalise_mode(img: Image.Image, channels: Literal[1, 3] = 3) -> Image.Image:
    """Convert any PIL mode to ``"L"``/``"RGB"`` (8-bit) or ``"F"`` (float in [0, 1], from 16-bit/int/float
    sources), with ``channels`` colour channels when 8-bit (``"F"`` stays single-plane; see
    :func:`pil_to_tensor`).

    Transparency (RGBA, LA, PA, palette or RGB/L with a ``transparency`` key) is composited on white.
    16-bit greyscale (``"I;16"``, or ``"I"`` from older Pillow) is scaled by 1/65535 rather than clipped
    at 255 as PIL's own ``convert`` does (PIL itself reads 48/64-bit RGB(A) PNGs as 8-bit, keeping the
    high byte, which is scaled correctly); mode ``"F"`` is taken to be in [0, 1] (values outside are
    clipped). CMYK uses PIL's conversion (no ICC colour management).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mode = img.mode
    if mode in HIGH_DEPTH_MODES:
        arr = np.asarray(img)
        if mode == "F":
            arr = arr.astype(np.float32)
        else:
            # I;16* hold 0..65535; mode "I" is how older Pillow opens 16-bit PNGs, so the same scale.
            arr = arr.astype(np.float32) / 65535.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    if mode == "1":
        img, mode = img.convert("L"), "L"
    if mode in ("P", "PA") or ("transparency" in img.info and mode in ("L", "RGB")):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBa", "La", "LA"):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode == "RGBA":
        img, mode = _composite_on_white(img), "RGB"
    if mode not in ("L", "RGB"):
        img, mode = img.convert("RGB"), "RGB"  # CMYK, YCbCr, LAB, HSV, RGBX
    want = "L" if channels == 1 else "RGB"
    return img if mode == want else img.convert(want)


def center_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The central square of a ``width x height`` image as a PIL box ``(left, top, right, bottom)``."""
    m = min(width, height)
    left, top = (width - m) / 2, (height - m) / 2
    return (left, top, left + m, top + m)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size`` in one antialiased
    resample (PIL's bicubic widens its kernel by the shrink factor, so no aliasing)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    w, h = img.size
    if (w, h) == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC, box=center_crop_box(w, h))


def pil_to_tensor(img: Image.Image, channels: Literal[1, 3] = 3) -> Tensor:
    """A normalised (``"L"``, ``"RGB"`` or ``"F"``) PIL image -> float32 ``(C, H, W)`` in ``[-1, 1]``."""
    if img.mode == "F":
        t = torch.from_numpy(np.array(img, dtype=np.float32)).clamp(0, 1)[None]
        t = to_signed(t)
        return t.expand(3, -1, -1).clone() if channels == 3 else t
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"pil_to_tensor expects a normalised image (L, RGB or F), got mode {img.mode!r}")
    return uint8_to_tensor(np.asarray(img))
