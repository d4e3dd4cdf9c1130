"""One-step and multistep consistency sampling (Song et al. 2023, Algorithm 1).

A consistency model maps any point of a probability-flow trajectory to its origin, so one evaluation at
``sigmas[0]`` is a sample; each later level ``sigma_i > 0`` of the grid re-noises that estimate to
``x0 + sqrt(sigma_i^2 - sigma_min^2) z`` and maps it back, trading evaluations for quality. The grid's
trailing 0 is not evaluated: ``NFE = len(sigmas) - 1``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .._utils import GeneratorLike, randn_like
from ..prediction import CONSISTENCY_SIGMA_MIN
from ._common import Callback, DenoiserFn, denoise, notify, sigma_list


def sample_consistency(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                       generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) over the levels of ``sigmas`` above 0."""
    s = [v for v in sigma_list(sigmas) if v > 0]
    x0 = x
    for i, sig in enumerate(s):
        if i > 0:  # re-noise the previous estimate to this level (z fresh: the sampler is stochastic)
            x = x0 + randn_like(x0, generator) * math.sqrt(max(sig**2 - CONSISTENCY_SIGMA_MIN**2, 0.0))
        x0 = denoise(denoiser, x, sig, cond, i)
        notify(callback, i, x0, sig, s[i + 1] if i + 1 < len(s) else 0.0, x0)
    return x0
