"""Pictures of 2-D samples: a scatter of samples beside reference data, and an animated trajectory.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no display is needed and no
global backend is switched (a notebook's inline plots keep working). GIFs are assembled by PIL.
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
