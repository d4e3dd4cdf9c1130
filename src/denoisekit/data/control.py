"""Control signals for ControlNet and T2I-Adapter, computed from a batch, and how well samples follow them.

=========  ====================================================================================  ==========
signal     ``(B, 1, H, W)`` control image                                                         fidelity
=========  ====================================================================================  ==========
edges      Sobel edges of the image's luma: ``|grad| / 4 > threshold`` (a unit step gives 1),     edge F1
           1 = edge (any dataset; Zhang et al. 2023 use Canny, Sobel needs no hysteresis)
mask       the foreground: the shapes dataset's ``label_map > 0``, else pixels differing from     mask IoU
           the top-left pixel by more than 0.25 in some channel (plain backgrounds: digits)
positions  a Gaussian bump (std ``0.1 * H``) at each shape centre (the shapes dataset's            mask IoU of
           ``positions``), max over shapes                                                        bumps > 0.5
=========  ====================================================================================  ==========

Fidelity (:func:`control_fidelity`) recomputes the signal of generated images and compares it with the
control: edges by the F1 score with a 1-pixel tolerance (an edge pixel counts when the other map has one
within its 3x3 neighbourhood), masks by intersection over union.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import check_choice
from .degrade import grayscale

Signal = Literal["edges", "mask", "positions"]
SIGNALS = ("edges", "mask", "positions")
#: Dataset fields a signal reads besides the image (``mask`` uses ``label_map`` where there is one).
SIGNAL_FIELDS: dict[str, tuple[str, ...]] = {"edges": (), "mask": ("label_map",), "positions": ("positions",)}
EDGE_THRESHOLD = 0.15


def sobel_edges(images: Tensor, threshold: float = EDGE_THRESHOLD) -> Tensor:
    """``(B, C, H, W)`` images in ``[-1, 1]`` -> ``(B, 1, H, W)`` edges in {0, 1}: Sobel gradient magnitude of
    the luma in ``[0, 1]`` over 4 above ``threshold`` (borders replicated: the frame is no edge)."""
    g = (grayscale(images.float()) + 1) / 2
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=g.device)
    kernels = torch.stack([k, k.t()])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    grad = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kernels)
    return ((grad.square().sum(1, keepdim=True).sqrt() / 4) > threshold).float()


def foreground_mask(images: Tensor) -> Tensor:
    """``(B, 1, H, W)`` in {0, 1}: pixels that differ from the image's top-left pixel by > 0.25 in a channel."""
    x = images.float()
    return ((x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.25).float()


def position_heatmaps(positions: Tensor, size: tuple[int, int], std: float = 0.1) -> Tensor:
    """``(B, M, 2)`` centres ``(x, y)`` as fractions of the side (``-1`` pads) -> ``(B, 1, H, W)`` bumps."""
    h, w = size
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    p = positions.float().cpu()
    d2 = (xs.view(1, 1, 1, w) - p[..., 0, None, None]) ** 2 + (ys.view(1, 1, h, 1) - p[..., 1, None, None]) ** 2
    bumps = torch.exp(-d2 / (2 * std * std)) * (p[..., 0] >= 0)[..., None, None]
    return bumps.amax(1, keepdim=True).to(positions.device) if p.shape[1] else torch.zeros(p.shape[0], 1, h, w)


def control_signal(signal: Signal, batch: Mapping[str, Any], images: Tensor | None = None) -> Tensor:
    """The ``(B, 1, H, W)`` control images of ``signal`` for a collated ``batch`` (its ``image``, unless
    ``images`` is given, plus the fields of :data:`SIGNAL_FIELDS`)."""
    check_choice("control signal", signal, SIGNALS)
    x = batch["image"] if images is None else images
    if signal == "edges":
        return sobel_edges(x)
    if signal == "mask":
        lm = batch.get("label_map")
        return foreground_mask(x) if lm is None else (torch.as_tensor(lm) > 0).float()[:, None].to(x.device)
    pos = batch.get("positions")
    if pos is None:
        raise ValueError("control signal 'positions' needs a dataset with shape 'positions' (data.name: shapes)")
    return position_heatmaps(torch.as_tensor(pos), tuple(x.shape[2:])).to(x.device)


def _near(m: Tensor) -> Tensor:
    return F.max_pool2d(m, 3, stride=1, padding=1)


def edge_f1(pred: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` F1 of edge maps ``(B, 1, H, W)`` in {0, 1} with a 1-pixel tolerance (1 when both are empty)."""
    p, t = pred.float(), target.float()
    dims = (1, 2, 3)
    precision = (p * _near(t)).sum(dims) / p.sum(dims).clamp_min(1)
    recall = (t * _near(p)).sum(dims) / t.sum(dims).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    both_empty = (p.sum(dims) == 0) & (t.sum(dims) == 0)
    return torch.where(both_empty, torch.ones_like(f1), f1)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` intersection over union of masks ``(B, 1, H, W)`` in {0, 1} (1 when both are empty)."""
    p, t = pred > 0.5, target > 0.5
    inter, union = (p & t).sum((1, 2, 3)).float(), (p | t).sum((1, 2, 3)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def control_fidelity(signal: Signal, samples: Tensor, control: Tensor) -> Tensor:
    """``(B,)`` agreement of generated ``samples`` (images in ``[-1, 1]``) with their ``control`` images."""
    check_choice("control signal", signal, SIGNALS)
    if signal == "edges":
        return edge_f1(sobel_edges(samples), control)
    if signal == "mask":
        return mask_iou(foreground_mask(samples), control)
    return mask_iou(foreground_mask(samples), (control > 0.5).float())
