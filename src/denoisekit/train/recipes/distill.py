"""A recipe in a hundred lines: distil a frozen teacher run into this run's network (``train.recipe: distill``).

The worked example of adding a recipe. It reuses the diffusion recipe's data, condition, EMA and previews and
changes two things: it declares a dependency (``teacher.run``, which the engine hashes, records and checks on
resume) and its step regresses the student's output onto the teacher's denoiser at the same noisy point,
``x0_hat = teacher(x_t / alpha, sigma)`` (the target of :class:`~denoisekit.losses.DiffusionLoss` with
``teacher=``; Hinton et al. 2015's distillation applied to the denoiser, the building block of model
compression for diffusion). The student may be smaller than the teacher, of another architecture or
parameterisation, or start from the teacher (``init.from_run`` = ``teacher.run``); only the student is saved.

A config::

    train:   {recipe: distill, steps: 2000}
    teacher: {run: runs/digits}           # any diffusion run of the same data shape and process family
    model:   {name: unet, channels: 16}   # the student
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...engine.recipe import Dependency
from ..run import load_run, run_info
from .diffusion import DiffusionRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine


class DistillRecipe(DiffusionRecipe):
    """The diffusion recipe with the teacher's denoiser as the regression target."""

    name = "distill"
    uses_teacher = True

    def dependencies(self) -> list[Dependency]:
        t = self.config.teacher
        if t.run is None:
            raise ValueError("train.recipe is 'distill' but teacher.run is not set (the run to distil)")
        return super().dependencies() + [Dependency("teacher", t.run, t.weights, "teacher.run")]

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)
        t = self.config.teacher
        try:
            teacher, tconfig = load_run(t.run, weights=t.weights)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"teacher.run: {e}") from None
        shape = tuple(run_info(t.run)["image_shape"])
        if shape != tuple(self.image_shape):
            raise ValueError(f"teacher.run {t.run!r} makes {shape} samples, this run's data are {tuple(self.image_shape)}")
        if tconfig.latent.autoencoder != self.config.latent.autoencoder:
            raise ValueError(f"teacher.run {t.run!r} trains on latent.autoencoder={tconfig.latent.autoencoder!r}, "
                             f"this run on {self.config.latent.autoencoder!r}: the two must see the same data")
        if tconfig.condition.kind != self.config.condition.kind:
            raise ValueError(f"teacher.run {t.run!r} is conditioned on {tconfig.condition.kind!r}, this run on "
                             f"{self.config.condition.kind!r}")
        self.teacher = teacher.to(engine.device)  # frozen, eval mode: neither trained nor saved
        return modules

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        return {"loss": self.config.loss(self.denoiser, x0, cond, gens, teacher=self.teacher).mean()}
