"""denoisekit: train, sample, guide and evaluate diffusion and flow models.

The core: a :class:`~denoisekit.process.Process` gives ``alpha(t), sigma(t)``; a
:class:`~denoisekit.prediction.Denoiser` turns any network into ``denoiser(y, sigma, cond) -> x0``
in the VE frame; samplers in :mod:`denoisekit.samplers` are pure functions of that denoiser and a
decreasing grid of noise levels from :mod:`denoisekit.schedules`; :class:`~denoisekit.losses.DiffusionLoss`
trains a network through the same adapter. A trained run: ``run = denoisekit.load("runs/x")``, then
``run.generate(8, prompt=...)`` (:mod:`denoisekit.api`, imported on first use so ``import denoisekit`` stays
light).
"""

from typing import Any

from .losses import DiffusionLoss
from .oracle import GaussianMixture
from .prediction import PREDICTIONS, Denoiser
from .process import PROCESSES, Process, get_process
from .samplers import SAMPLERS, get_sampler
from .schedules import SCHEDULES, get_sigmas

__version__ = "0.1.0"

__all__ = ["Denoiser", "DiffusionLoss", "GaussianMixture", "PREDICTIONS", "PROCESSES", "Process", "Run",
           "SAMPLERS", "SCHEDULES", "get_process", "get_sampler", "get_sigmas", "load", "save_grid"]

_LAZY = {"load": "api", "Run": "api", "save_grid": "eval.plotting"}


def __getattr__(name: str) -> Any:
    """``load``, ``Run`` and ``save_grid`` on first use (they pull in the training and plotting stacks)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'denoisekit' has no attribute {name!r}")
