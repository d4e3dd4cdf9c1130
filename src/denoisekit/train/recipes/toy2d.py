"""The 2-D toy recipe: a diffusion loss on points of a toy dataset, with an EMA, over a
:class:`~denoisekit.train.toy2d.Toy2DConfig`.

The data are a fixed set of ``n_train`` points drawn with ``seed``, read in the engine's seeded per-epoch
permutations; each point's noise level and noise come from its own generator. AdamW with linear warm-up to a
constant learning rate, gradient clipping, and the "warmup" EMA (decay ``min(decay, (1 + k) / (10 + k))``,
:class:`~denoisekit.engine.ema.EMA`), whose weights are what the run exports: ``model.safetensors`` and
``loss.csv`` in ``config.out``, every ``save_every`` steps (the recipe's preview) and at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...data.toy2d import is_points_file, read_points, save_points
from ...engine.loop import Engine
from ...engine.recipe import EMASpec, Recipe
from ...io import write_text_atomic
from ...options import plain, read_config_file
from ...prediction import Denoiser
from ..config import OptimConfig, TrainConfig
from ..toy2d import (CONFIG_FILE, FORMAT, LOSS_FILE, POINTS_FILE, WEIGHTS_FILE, Toy2DConfig, build_denoiser,
                     save_weights, training_points)
from .zoo import DataSection, EngineSections


#: Fields of a Toy2DConfig that are the engine's ``train`` and ``optim`` sections (or where the run goes).
_ENGINE_FIELDS = ("out", "steps", "batch", "lr", "warmup", "weight_decay", "grad_clip", "seed", "log_every",
                  "save_every")


def toy2d_sections(config: Toy2DConfig) -> EngineSections:
    """The engine's view of a :class:`Toy2DConfig`: one process on the CPU, the first non-finite step stops
    the run; the engine checkpoints at the end only (``save_every`` exports instead)."""
    train = TrainConfig(steps=config.steps, batch_size=config.batch, seed=config.seed, log_every=config.log_every,
                        save_every=0, keep_last=1, max_nan_steps=1, device="cpu")
    optim = OptimConfig(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup,
                        grad_clip=config.grad_clip)
    return EngineSections(config, train, optim, DataSection(config.data))


class Toy2DRecipe(Recipe):
    """Diffusion on 2-D points (see the module docstring)."""

    name = "toy2d"

    def __init__(self, config: Toy2DConfig):
        super().__init__(toy2d_sections(config))
        self.toy = config
        self.template: Denoiser | None = None  # the untrained denoiser built with the network
        self.denoiser: Denoiser | None = None

    def config_to_dict(self) -> dict[str, Any]:
        toy = {k: v for k, v in self.toy.to_dict().items() if k not in _ENGINE_FIELDS}
        return {"toy2d": plain(toy), **self.config.to_dict()}

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return read_config_file(path, (), lambda raw, _: dict(raw))

    def build_dataset(self) -> Tensor:
        return training_points(self.toy)  # (N, 2): item i is point i

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(items))

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        self.template = build_denoiser(self.toy)  # the network seeded from ``seed``, and its process
        return {"net": self.template.net}

    def ema(self) -> list[EMASpec]:
        return [EMASpec("net", "warmup", self.toy.ema_decay)]

    def step(self, batch: Tensor, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        if self.denoiser is None:  # the trained (process-wrapped) network under the run's parameterisation
            t = self.template
            assert t is not None
            self.denoiser = Denoiser(self.module("net"), t.process, t.prediction, time_input=t.time_input,
                                     sigma_data=t.sigma_data)
        return {"loss": self.toy.loss(self.denoiser, batch.to(engine.device), None, gens).mean()}

    def preview_every(self) -> int:
        return self.toy.save_every

    def preview(self, engine: Engine) -> None:
        if engine.step < self.toy.steps:
            self.export(engine)

    def finish(self, engine: Engine) -> None:
        self.export(engine)

    def export(self, engine: Engine) -> None:
        """The EMA weights and the loss log so far to ``config.out`` (``model.safetensors``, ``loss.csv``)."""
        out = Path(self.toy.out)
        out.mkdir(parents=True, exist_ok=True)
        save_weights(engine.ema_module("net"), out / WEIGHTS_FILE,
                     {"format": FORMAT, "weights": "ema", "step": str(engine.step)})
        with open(engine.out / "log.csv", newline="") as f:
            rows = [(r["step"], f"{float(r['loss']):.6g}", f"{float(r['lr']):.6g}") for r in csv.DictReader(f)]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([("step", "loss", "lr"), *rows])
        write_text_atomic(out / LOSS_FILE, buf.getvalue())


def train_toy2d(config: Toy2DConfig, *, points: Tensor | None = None, progress: bool = True) -> Path:
    """Train per ``config`` and return the run directory ``config.out``.

    ``config.data`` is a built-in dataset or a points file (``.npy``/``.npz``/``.csv``, ``(N, 2)``); or
    ``points``, an ``(N, 2)`` tensor, trains on those (the run records them as its points file). Either way
    the run keeps its own copy of the points (:data:`~denoisekit.train.toy2d.POINTS_FILE`).

    AdamW with linear warmup to a constant learning rate, gradient clipping, and an EMA of the
    weights (:class:`~denoisekit.engine.ema.EMA`, "warmup" profile: decay
    ``min(decay, (1 + k) / (10 + k))``, so early averages are not dominated by the initialisation).
    Batches are read from a fixed training set of ``n_train`` points; the whole run is
    deterministic given ``config.seed``.
    """
    out = Path(config.out)
    if points is not None:
        pts = torch.as_tensor(points).detach().cpu().float()
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2 or not torch.isfinite(pts).all():
            raise ValueError(f"points must be a finite (N, 2) tensor with N >= 2, got shape {tuple(pts.shape)}")
        config = dataclasses.replace(config, data=str(out / POINTS_FILE))
    elif is_points_file(config.data):
        pts = read_points(config.data)  # a bad file is one line before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if points is not None or is_points_file(config.data):
        save_points(out / POINTS_FILE, pts)
    write_text_atomic(out / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")
    with tempfile.TemporaryDirectory(prefix="denoisekit-toy2d-") as tmp:  # checkpoints, log.csv: not kept
        Engine(Toy2DRecipe(config), tmp, progress=progress).fit()
    return out
