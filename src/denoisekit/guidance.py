"""Guidance as denoiser wrappers: each takes a denoiser and returns one, so every sampler gets it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .prediction import Denoiser


class ClassifierFreeGuidance:
    """``x0 = x0(y | null) + s (x0(y | c) - x0(y | null))``: Ho & Salimans 2022, eq. 6, on the denoiser."""

    def __init__(self, denoiser: Denoiser, scale: float, null_label: int):
        self.denoiser, self.scale, self.null_label = denoiser, scale, null_label
        self.process = denoiser.process

    def __call__(self, y: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if cond is None or self.scale == 1:
            return self.denoiser(y, sigma, cond)
        null = torch.full_like(cond, self.null_label)
        out_c, out_u = self.denoiser(torch.cat([y, y]), torch.cat([sigma, sigma]), torch.cat([cond, null])).chunk(2)
        return out_u + self.scale * (out_c - out_u)
