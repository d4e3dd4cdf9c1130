"""Exponential moving averages of network weights: ``ema <- beta_n ema + (1 - beta_n) net`` after update ``n``.

Two profiles of ``beta_n`` (``n = 1, 2, ...`` counts optimiser updates):

==========  ==================================  ===================================================
kind        beta_n                              source
==========  ==================================  ===================================================
warmup      min(decay, (1 + k) / (10 + k)),     the warm-up of TensorFlow's ExponentialMovingAverage
            k = n - 1                           ("num_updates"), used by DDPM/ADM code bases
power       (1 - 1/n)^(gamma + 1)               EDM2's power-function EMA (Karras et al. 2024,
                                                "Analyzing and improving the training dynamics",
                                                Sec. 3.1, eq. 4 with t counted in updates)
none        0 (the EMA is the network itself)
==========  ==================================  ===================================================

The power EMA averages with weights ``~ tau^gamma`` over the whole history, so its width grows with
training length; EDM2 parameterises it by the relative standard deviation of that profile,
``sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))`` (EDM2, eq. 5): :func:`sigma_rel_to_gamma`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._utils import check_choice

EMAKind = Literal["warmup", "power", "none"]
EMA_KINDS = ("warmup", "power", "none")


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma`` of a power-function EMA with relative width ``sigma_rel`` (EDM2, eq. 5).

    Solves ``sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1``, i.e. with ``s = sigma_rel^-2`` the
    cubic ``gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0``, for its largest real root.
    """
    if not (isinstance(sigma_rel, (int, float)) and 0 < sigma_rel < gamma_to_sigma_rel(0.0)):
        raise ValueError(f"sigma_rel must be in (0, {gamma_to_sigma_rel(0.0):.4f}) (gamma > 0), got {sigma_rel!r}")
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative standard deviation of the power-function EMA profile ``tau^gamma`` (EDM2, eq. 5)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class EMA:
    """An averaged copy of a network (``.module``, eval mode, no gradients); see the module docstring.

    ``update(net)`` applies one step with ``beta`` of the next update number; buffers (e.g. running
    statistics) are copied, not averaged. The state is ``state_dict()`` (JSON-able numbers) plus the
    weights ``module.state_dict()``.
    """

    def __init__(self, net: nn.Module, kind: EMAKind = "warmup", decay: float = 0.9999, sigma_rel: float = 0.05):
        check_choice("EMA kind", kind, EMA_KINDS)
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.kind, self.decay, self.sigma_rel = kind, float(decay), float(sigma_rel)
        self.gamma = sigma_rel_to_gamma(sigma_rel) if kind == "power" else None
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.num_updates = 0

    def beta(self, n: int) -> float:
        """Weight on the old average at update ``n >= 1``."""
        if self.kind == "none":
            return 0.0
        if self.kind == "power":
            assert self.gamma is not None
            return (1.0 - 1.0 / n) ** (self.gamma + 1)
        return min(self.decay, n / (9.0 + n))  # (1 + k) / (10 + k) with k = n - 1

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """``ema <- beta ema + (1 - beta) net`` for parameters; buffers are copied."""
        self.num_updates += 1
        weight = 1.0 - self.beta(self.num_updates)
        ema_params = list(self.module.parameters())
        net_params = [p.detach() for p in net.parameters()]
        if len(ema_params) != len(net_params):
            raise ValueError(f"EMA has {len(ema_params)} parameters, the network {len(net_params)}")
        torch._foreach_lerp_(ema_params, net_params, weight)
        for e, b in zip(self.module.buffers(), net.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "decay": self.decay, "sigma_rel": self.sigma_rel, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"kind": self.kind, "decay": self.decay, "sigma_rel": self.sigma_rel}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"EMA state is for {theirs}, this run uses {mine}")
        n = state.get("num_updates")
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"EMA state: num_updates must be an integer >= 0, got {n!r}")
        self.num_updates = n
