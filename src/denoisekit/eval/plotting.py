"""Pictures: a scatter of 2-D samples beside reference data, an animated trajectory, and labelled image grids.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no display is needed and no
global backend is switched (a notebook's inline plots keep working). GIFs and grids are assembled by PIL.

An image grid (:func:`save_grid`) is a list of groups, each with an optional row label: the images of one class
or one prompt (a group wraps onto as many rows as a near-square grid needs), or, ``aligned``, rows that belong
together column by column (a restoration's input, output and truth).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _figure(width: float, height: float, dpi: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _np(x: Tensor) -> np.ndarray:
    return torch.as_tensor(x).detach().to("cpu", torch.float64).numpy()


def plot_limits(reference: Tensor, margin: float = 0.4) -> tuple[float, float]:
    """A symmetric axis range covering ``reference`` (and at least [-1.5, 1.5]) plus ``margin``."""
    extent = float(torch.as_tensor(reference).abs().max()) if len(reference) else 0.0
    half = max(1.5, extent + margin)
    return -half, half


def _scatter(ax: Any, pts: np.ndarray, lim: tuple[float, float], title: str, color: str) -> None:
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=color, linewidths=0, rasterized=True)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)


def save_scatter(samples: Tensor, reference: Tensor, path: str | os.PathLike[str], *,
                 title: str = "samples", reference_title: str = "held-out data",
                 metrics: Mapping[str, float] | None = None, dpi: int = 110) -> None:
    """Save a PNG: ``samples (N, 2)`` beside ``reference (M, 2)`` on the same axes; ``metrics`` as a caption."""
    lim = plot_limits(reference)
    fig = _figure(8, 4.3, dpi)
    axes = fig.subplots(1, 2)
    _scatter(axes[0], _np(samples), lim, title, "tab:blue")
    _scatter(axes[1], _np(reference), lim, reference_title, "tab:gray")
    if metrics:
        fig.text(0.5, 0.01, "   ".join(f"{k} = {v:.4g}" for k, v in metrics.items()), ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if metrics else 0, 1, 1))
    fig.savefig(path)


def _render(fig: Any) -> Any:
    from PIL import Image

    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def save_trajectory_gif(frames: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                        reference: Tensor | None = None, fps: float = 4.0, hold_last: int = 6,
                        max_points: int = 2000, dpi: int = 70) -> None:
    """Save an animated GIF of a sampling trajectory.

    ``frames`` are dicts with ``x`` (VE-frame state), ``sigma`` (its noise level) and optionally
    ``denoised`` (the x0 estimate), e.g. the payloads a sampler's ``callback`` receives (using
    ``sigma_next`` as the state's level). The state is drawn as ``x / sqrt(1 + sigma^2)``, the
    variance-preserving view, so the prior and the data fit on the same axes for every process.
    Frames advance at ``fps``; the last one stays ``hold_last`` times as long.
    """
    if not frames:
        raise ValueError("no frames to animate")
    lim = plot_limits(reference if reference is not None else frames[-1]["x"])
    images = []
    for f in frames:
        sigma = float(f["sigma"])
        x = _np(f["x"][:max_points]) / math.sqrt(1 + sigma**2)
        denoised = f.get("denoised")
        fig = _figure(7, 3.7, dpi)
        axes = fig.subplots(1, 2)
        _scatter(axes[0], x, lim, f"x / sqrt(1 + sigma^2), sigma = {sigma:.3g}", "tab:blue")
        if denoised is not None:
            _scatter(axes[1], _np(denoised[:max_points]), lim, "denoised estimate x0_hat", "tab:orange")
        else:
            axes[1].axis("off")
        fig.tight_layout()
        images.append(_render(fig))
    frame_ms = int(1000 / fps)
    durations = [frame_ms] * (len(images) - 1) + [frame_ms * max(1, hold_last)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)


# ------------------------------------------------------------------------------------------ image grids

#: Pixels between cells, extra pixels between bands of aligned rows, the label font size and widest label column.
GRID_PAD, BAND_GAP, LABEL_SIZE, LABEL_WIDTH = 2, 6, 11, 160


def grid_columns(sizes: Sequence[int]) -> int:
    """Columns of a near-square grid of groups of ``sizes`` images: ``ceil(sqrt(total))``, at most the largest
    group (so 10 classes of 10 keep one row each, and 1 prompt of 40 is 7 wide, not a 1 x 40 strip), evened out
    so a group's last row is not nearly empty. Aligned groups share these columns (a band of rows per
    ``columns`` images of each)."""
    widest = max(sizes, default=1) or 1
    cols = min(widest, math.ceil(math.sqrt(sum(sizes))))
    return max(1, math.ceil(widest / math.ceil(widest / cols)))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit_lines(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """``text`` wrapped at words into at most ``max_lines`` lines of at most ``width`` pixels; what does not fit
    is cut, ending in ``...``."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    lines = [_cut(ln, font, width) for ln in lines] or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [_cut(lines[max_lines - 1], font, width, more=True)]
    return lines


def _cut(line: str, font: Any, width: int, *, more: bool = False) -> str:
    """``line`` within ``width`` pixels: as it is, or shortened and ending in ``...`` (always, with ``more``)."""
    if not more and font.getlength(line) <= width:
        return line
    while len(line) > 1 and font.getlength(line.rstrip() + "...") > width:
        line = line[:-1]
    return line.rstrip() + "..."


def grid_image(groups: Tensor | Sequence[Tensor], *, labels: Sequence[str] | None = None, aligned: bool = False,
               min_cell: int = 32, columns: int | None = None) -> Any:
    """The grid of ``groups`` of images ``(N_g, C, H, W)`` in ``[-1, 1]`` as a PIL image (module docstring):
    cells upscaled (nearest) to at least ``min_cell`` pixels, ``labels`` (one per group) in a column on the
    left, ``columns`` default :func:`grid_columns`. One channel is greyscale, 3 (or the first 3 of 4) RGB."""
    from PIL import Image, ImageDraw

    groups = [groups] if isinstance(groups, Tensor) else groups  # one (N, C, H, W) tensor: one group
    groups = [g.detach().float().cpu().clamp(-1, 1) for g in groups]
    if not groups or any(g.ndim != 4 for g in groups) or len({tuple(g.shape[1:]) for g in groups}) != 1:
        raise ValueError(f"a grid needs groups of (N, C, H, W) images of one shape, got "
                         f"{[tuple(g.shape) for g in groups]}")
    if labels is not None and len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels for {len(groups)} groups of images")
    if aligned and len({len(g) for g in groups}) != 1:
        raise ValueError(f"aligned rows need groups of one size, got {[len(g) for g in groups]}")
    sizes = [len(g) for g in groups]
    cols = columns or grid_columns(sizes)
    c, h, w = groups[0].shape[1:]
    k = max(1, math.ceil(min_cell / max(h, w)))
    ch, cw = h * k + GRID_PAD, w * k + GRID_PAD
    # rows: (group index, first image, band) in drawing order
    if aligned:
        rows = [(gi, b * cols, b) for b in range(math.ceil(sizes[0] / cols)) for gi in range(len(groups))]
    else:
        rows = [(gi, r * cols, gi) for gi, size in enumerate(sizes) for r in range(max(1, math.ceil(size / cols)))]
    font = _font(LABEL_SIZE)
    label_w = 0
    if labels:
        label_w = min(LABEL_WIDTH, max(math.ceil(font.getlength(t)) for t in labels) + 2 * GRID_PAD + 4)
    bands = rows[-1][2] + 1 if rows else 1
    height = GRID_PAD + len(rows) * ch + (bands - 1) * BAND_GAP
    canvas = Image.new("RGB", (label_w + GRID_PAD + cols * cw, height), "white")
    draw = ImageDraw.Draw(canvas)
    y, last_band, first_row = GRID_PAD, 0, {}
    for gi, start, band in rows:
        if band != last_band:
            y, last_band = y + BAND_GAP, band
        first_row.setdefault((gi, band), y)
        for j, im in enumerate(groups[gi][start:start + cols]):
            cell = ((im[:3] if c in (3, 4) else im[:1].expand(3, -1, -1)) + 1) * 127.5
            arr = cell.round().clamp(0, 255).to(torch.uint8).repeat_interleave(k, 1).repeat_interleave(k, 2)
            canvas.paste(Image.fromarray(arr.permute(1, 2, 0).numpy()), (label_w + GRID_PAD + j * cw, y))
        y += ch
    if labels:
        line_h = LABEL_SIZE + 2
        for (gi, band), top in first_row.items():
            span = sum(ch for g, _, b in rows if g == gi and b == band) - GRID_PAD
            lines = _fit_lines(labels[gi], font, label_w - 2 * GRID_PAD - 4, max(1, span // line_h))
            ty = top + max(0, (min(span, ch - GRID_PAD) - len(lines) * line_h) // 2)
            for i, line in enumerate(lines):
                draw.text((GRID_PAD + 2, ty + i * line_h), line, fill="black", font=font)
    return canvas


def save_grid(groups: Tensor | Sequence[Tensor], path: str | os.PathLike[str], *, labels: Sequence[str] | None = None,
              aligned: bool = False, min_cell: int = 32, columns: int | None = None) -> None:
    """:func:`grid_image` written atomically as a PNG."""
    from ..io import write_atomic

    img = grid_image(groups, labels=labels, aligned=aligned, min_cell=min_cell, columns=columns)
    write_atomic(path, lambda p: img.save(p, format="PNG"))
