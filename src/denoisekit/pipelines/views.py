"""Views of a canvas for joint denoising: each view a pixel map to and from the canonical space.

A :class:`View` is an index map: the view's pixel ``j`` is canvas pixel ``index[j]`` (a gather), and
going back scatters each view pixel to the canvas pixel it came from (the adjoint). Every view the joint
methods need is such a map, so one representation serves them all:

- windows of a wider or taller canvas (MultiDiffusion, Bar-Tal et al. 2023, Sec. 3.1), optionally with a
  circular wrap in width for loop-closed 360-degree panoramas (:func:`windows`);
- the transforms of visual anagrams (Geng et al. 2024, Sec. 3): identity, vertical and horizontal flips,
  rotations by 90 and 180 degrees, a permutation of square patches and colour negation (a sign of -1 on
  the identity map, ``x -> -x``; Geng et al.'s "negate") (:func:`anagram_view`). These are signed
  permutations of the canvas, orthogonal, so their inverse is their adjoint: :func:`check_invertible`
  refuses a view that is not a permutation.

Shapes: canvases ``(B, C, H, W)``, views ``(B, C, h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .._utils import check_choice

AnagramView = Literal["identity", "flip", "hflip", "rot90", "rot180", "negate", "patch"]
ANAGRAM_VIEWS = ("identity", "flip", "hflip", "rot90", "rot180", "negate", "patch")


@dataclass(frozen=True)
class View:
    """A view ``(h, w)`` of a canvas ``(H, W)``: view pixel ``j`` (row-major) is ``sign`` times canvas pixel
    ``index[j]`` (``sign`` -1: a negated view)."""

    name: str
    index: Tensor  # (h * w,) long, into the row-major canvas
    canvas: tuple[int, int]
    shape: tuple[int, int]
    sign: float = 1.0

    def __post_init__(self) -> None:
        h, w = self.shape
        if self.index.shape != (h * w,) or self.index.dtype != torch.long:
            raise ValueError(f"view {self.name!r}: index must be a ({h * w},) long tensor, "
                             f"got {tuple(self.index.shape)} {self.index.dtype}")
        n = self.canvas[0] * self.canvas[1]
        if len(self.index) and (int(self.index.min()) < 0 or int(self.index.max()) >= n):
            raise ValueError(f"view {self.name!r}: index points outside the {self.canvas[0]}x{self.canvas[1]} canvas")
        if self.sign not in (1.0, -1.0):
            raise ValueError(f"view {self.name!r}: sign must be 1 or -1, got {self.sign}")

    def project(self, canvas: Tensor) -> Tensor:
        """The view ``(B, C, h, w)`` of ``canvas`` ``(B, C, H, W)`` (a gather, times ``sign``)."""
        out = self.gather(canvas)
        return out if self.sign == 1 else -out

    def gather(self, canvas: Tensor) -> Tensor:
        """:meth:`project` without the sign: where each view pixel comes from (weights and masks)."""
        self._check(canvas, self.canvas, "canvas")
        flat = canvas.flatten(2)
        return flat[:, :, self.index.to(canvas.device)].unflatten(2, self.shape)

    def unproject(self, view: Tensor) -> Tensor:
        """``view`` ``(B, C, h, w)`` scattered back to the canvas ``(B, C, H, W)`` (the adjoint of :meth:`project`:
        zero where the view does not reach, summed where two view pixels share one canvas pixel)."""
        out = self.scatter(view)
        return out if self.sign == 1 else -out

    def scatter(self, view: Tensor) -> Tensor:
        """:meth:`unproject` without the sign (the adjoint of :meth:`gather`)."""
        self._check(view, self.shape, "view")
        out = view.new_zeros(*view.shape[:2], self.canvas[0] * self.canvas[1])
        out.index_add_(2, self.index.to(view.device), view.flatten(2))
        return out.unflatten(2, self.canvas)

    def coverage(self) -> Tensor:
        """``(H, W)`` float: how many view pixels land on each canvas pixel."""
        return self.scatter(torch.ones(1, 1, *self.shape, dtype=torch.float64))[0, 0]

    def _check(self, x: Tensor, hw: tuple[int, int], what: str) -> None:
        if x.ndim != 4 or tuple(x.shape[2:]) != tuple(hw):
            raise ValueError(f"view {self.name!r}: expected a {what} (B, C, {hw[0]}, {hw[1]}), got {tuple(x.shape)}")


def check_invertible(view: View) -> View:
    """``view`` if it is a permutation of its canvas (every canvas pixel read exactly once), else a
    ``ValueError``: the views of an anagram must be invertible for the canonical average to be exact."""
    if view.shape != view.canvas:
        raise ValueError(f"view {view.name!r} is not invertible: it maps a {view.canvas[0]}x{view.canvas[1]} canvas "
                         f"to {view.shape[0]}x{view.shape[1]}")
    counts = torch.bincount(view.index, minlength=view.canvas[0] * view.canvas[1])
    if not bool((counts == 1).all()):
        raise ValueError(f"view {view.name!r} is not invertible: {int((counts == 0).sum())} canvas pixels are never "
                         f"read and {int((counts > 1).sum())} are read more than once")
    return view


def _grid(h: int, w: int) -> Tensor:
    return torch.arange(h * w).view(h, w)


def anagram_view(name: AnagramView, size: tuple[int, int], *, patch: int = 8, seed: int = 0) -> View:
    """The transform ``name`` of a canvas ``size = (H, W)`` as an invertible :class:`View` (visual anagrams,
    Geng et al. 2024): ``flip`` (upside down), ``hflip`` (mirror), ``rot90`` (square canvases), ``rot180``,
    ``negate`` (``x -> -x``: the image in negative colours), ``patch`` (``patch`` x ``patch`` tiles shuffled
    by a permutation drawn from ``seed``; the tile must divide the canvas)."""
    check_choice("view", name, ANAGRAM_VIEWS)
    h, w = size
    g = _grid(h, w)
    if name in ("identity", "negate"):
        idx = g
    elif name == "flip":
        idx = g.flip(0)
    elif name == "hflip":
        idx = g.flip(1)
    elif name == "rot180":
        idx = g.flip(0).flip(1)
    elif name == "rot90":
        if h != w:
            raise ValueError(f"view 'rot90' needs a square canvas, got {h}x{w}")
        idx = g.rot90(1, (0, 1))
    else:
        if patch < 1 or h % patch or w % patch:
            raise ValueError(f"view 'patch': the patch size {patch} must divide the canvas {h}x{w}")
        tiles = g.unflatten(0, (h // patch, patch)).unflatten(2, (w // patch, patch)).permute(0, 2, 1, 3)
        tiles = tiles.reshape(-1, patch, patch)  # (T, p, p), row-major tiles
        order = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(seed))
        if len(tiles) > 1:  # a derangement-free shuffle could leave every tile in place: draw until one moves
            while bool((order == torch.arange(len(tiles))).all()):
                order = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(seed := seed + 1))
        idx = tiles[order].view(h // patch, w // patch, patch, patch).permute(0, 2, 1, 3).reshape(h, w)
    return View(name, idx.reshape(-1).contiguous(), (h, w), (h, w), -1.0 if name == "negate" else 1.0)


def window_offsets(length: int, window: int, stride: int, *, wrap: bool = False) -> list[int]:
    """Window starts along one axis: every ``stride`` from 0, plus a last window flush with the end (as
    MultiDiffusion's panorama code) or, with ``wrap``, windows every ``stride`` round a circle of ``length``."""
    if window > length:
        raise ValueError(f"the canvas ({length} px) is smaller than the model's window ({window} px)")
    if stride < 1 or stride > window:
        raise ValueError(f"stride {stride} must be in [1, {window}] (the window size): a larger stride leaves gaps")
    if wrap:
        if length % stride:
            raise ValueError(f"a loop canvas of {length} px needs a stride that divides it, got {stride}")
        return list(range(0, length, stride))
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def windows(canvas: tuple[int, int], window: tuple[int, int], stride: int | tuple[int, int], *,
            loop: bool = False) -> list[View]:
    """Crop windows ``window = (h, w)`` of ``canvas = (H, W)`` every ``stride`` pixels (MultiDiffusion's
    panorama views). ``loop``: the canvas is a 360-degree panorama, closed in width: windows wrap round
    the right edge to the left (circular padding), so no seam is special."""
    (hh, ww), (h, w) = canvas, window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    g = _grid(hh, ww)
    views = []
    for top in window_offsets(hh, h, sh):
        for left in window_offsets(ww, w, sw, wrap=loop):
            cols = torch.arange(left, left + w) % ww
            idx = g[top:top + h][:, cols]
            views.append(View(f"window({top},{left})", idx.reshape(-1).contiguous(), (hh, ww), (h, w)))
    return views


def check_coverage(views: Sequence[View]) -> Tensor:
    """``(H, W)`` coverage of ``views`` summed; a ``ValueError`` if some canvas pixel is in no view."""
    if not views:
        raise ValueError("no views given")
    cover = sum(v.coverage() for v in views)
    assert isinstance(cover, Tensor)
    if bool((cover == 0).any()):
        raise ValueError(f"the views leave {int((cover == 0).sum())} canvas pixels uncovered")
    return cover
