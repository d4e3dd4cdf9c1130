"""One module per training recipe, each exporting ``CASE``: a tiny, fast configuration of that recipe that
tests/test_recipes.py runs through the engine's shared checks (exact resume, 1 process == 2)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from denoisekit.engine.checkpoint import latest_checkpoint, load_checkpoint


@dataclass(frozen=True)
class RecipeCase:
    """``make(workdir)`` returns a fresh recipe (any data it needs written under ``workdir``); ``steps`` is
    the run's ``train.steps`` (even, so that it can stop halfway); ``tolerance`` (rtol, atol) for the
    1-vs-2-process comparison, where only the order of float additions differs."""

    name: str
    make: Callable[[Path], Any]
    steps: int
    tolerance: tuple[float, float] = (1e-4, 1e-5)


def all_cases() -> dict[str, RecipeCase]:
    out = {}
    for info in pkgutil.iter_modules(__path__):
        case = importlib.import_module(f"{__name__}.{info.name}").CASE
        out[case.name] = case
    return out


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the latest checkpoint: weights, EMA and optimiser state."""
    ck = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    out.update({f"ema.{k}": v for k, v in ck["ema"].items()})
    out.update({f"opt.{p}.{k}": v for p, s in ck["optimizer"]["state"].items() for k, v in s.items()
                if isinstance(v, torch.Tensor)})
    return out
