"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student that takes one DDIM step where its
teacher takes two (``train.recipe: progressive``).

The student starts from the teacher (``init.from_run`` = ``teacher.run``) and samples with DDIM in
``sample.nfe`` = N steps. The teacher's grid is ``get_sigmas(process, sample.schedule, 2N)``; the student's N
steps are every second level of it (``teacher[::2]``) and each student step's midpoint is the level between
(``teacher[1::2]``), so every student step, the last one to 0 included, is exactly two teacher DDIM steps (the
paper's ``t -> t - 0.5/N -> t - 1/N``). Per sample: a student level ``sigma_i`` drawn uniformly from the N,
``y = x0 + sigma_i eps``, two teacher DDIM steps to ``sigma_{i+1}``, and the target ``x~`` for which one DDIM
step from ``y`` lands where the teacher did (Algorithm 2, in the VE frame):

    x~ = (y'' - (s''/s) y) / (1 - s''/s)       (``y''`` the teacher's point at ``s''``; ``x~ = y''`` at s'' = 0)

The loss is the x0-error weighted by the truncated SNR ``max(SNR, 1)`` (Sec. 4: the weighting that keeps the
last, lowest-SNR steps trained); the paper's v-parameterisation is ``process.prediction: v`` in the config.
Halving N is a run whose teacher is the previous run (``teacher.run`` = ``init.from_run`` = the last student,
``sample.nfe`` halved): runs from runs. The step count is recorded in ``state.json`` (``fewstep``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...denoiser import DenoiserFn
from ...schedules import get_sigmas
from ..run import run_info, trained_steps
from .distill import DistillRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine


def teacher_grid(process: Any, schedule: str, steps: int, teacher: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(student, mid)``: the student's ``steps + 1`` levels (ending at 0), every second level of the teacher's
    ``2 * steps``-step grid, and per student step the teacher level between them (float64). The teacher's grid is
    ``teacher`` when given (a student of an earlier round samples on its own), else the ``schedule``'s."""
    if teacher is None:
        teacher = get_sigmas(process, schedule, 2 * steps)
    teacher = teacher.to(torch.float64)
    if len(teacher) != 2 * steps + 1:
        raise ValueError(f"the teacher's grid has {len(teacher) - 1} steps; a {steps}-step student needs {2 * steps}")
    return teacher[::2].clone(), teacher[1::2].clone()


@torch.no_grad()
def progressive_target(teacher: DenoiserFn, y: Tensor, sigma: Tensor, mid: Tensor, nxt: Tensor,
                       cond: Any = None) -> Tensor:
    """Algorithm 2's ``x~`` (VE frame) for ``y`` ``(B, ...)`` at ``sigma`` ``(B,)``: two teacher DDIM steps
    ``sigma -> mid -> nxt`` (per-sample levels, one batched teacher call per step), then the x0 for which one
    DDIM step from ``y`` reaches the same point; at ``nxt = 0`` that is the teacher's last point itself."""
    def shape(v: Tensor) -> Tensor:
        return v.to(y.dtype).view(-1, *[1] * (y.ndim - 1))

    s, m, n = shape(sigma), shape(mid), shape(nxt)
    x0 = teacher(y, sigma.to(y.dtype), cond)
    y1 = x0 + (m / s) * (y - x0)  # DDIM(eta=0) in the VE frame: y' = x0 + (s'/s)(y - x0)
    x1 = teacher(y1, mid.to(y.dtype), cond)
    y2 = x1 + (n / m) * (y1 - x1)
    ratio = n / s
    return (y2 - ratio * y) / (1 - ratio)


def truncated_snr_weight(sigma_ve: Tensor) -> Tensor:
    """``max(SNR, 1)`` with ``SNR = 1 / sigma_ve^2`` (Salimans & Ho 2022, Sec. 4, "truncated SNR")."""
    return torch.clamp(sigma_ve.to(torch.float64) ** -2, min=1.0)


class ProgressiveRecipe(DistillRecipe):
    """Distil a teacher's 2N DDIM steps into the student's N (see the module docstring)."""

    name = "progressive"

    @property
    def steps(self) -> int:
        return int(self.config.sample.nfe)

    def build(self, engine: Engine) -> dict[str, Any]:
        modules = super().build(engine)
        if self.steps < 1:
            raise ValueError(f"sample.nfe is the student's step count; got {self.steps}")
        if self.config.sample.sampler != "ddim":
            raise ValueError(f"progressive distillation trains DDIM steps: set sample.sampler=ddim (got "
                             f"{self.config.sample.sampler!r})")
        tp, run = self.teacher.process, self.config.teacher.run
        if type(tp).__name__ != type(self.denoiser.process).__name__:
            raise ValueError(f"teacher.run {run!r} uses process {type(tp).__name__}, this run "
                             f"{type(self.denoiser.process).__name__}: progressive distillation needs one process")
        own = trained_steps(run_info(run))  # a student of the previous round: its own grid, at twice our steps
        if own is not None and own.steps != 2 * self.steps:
            raise ValueError(f"teacher.run {run!r} is a {own.method} student trained for {own.steps} steps: a student "
                             f"of it takes half as many, sample.nfe={own.steps // 2} (got {self.steps})")
        self.student_grid, self.mid = teacher_grid(self.denoiser.process, self.config.sample.schedule, self.steps,
                                                   None if own is None else own.sigmas)
        return modules

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        idx = torch.stack([torch.randint(0, self.steps, (1,), generator=g)[0] for g in gens])
        eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
        sigma, mid, nxt = self.student_grid[idx], self.mid[idx], self.student_grid[idx + 1]
        y = x0 + eps * sigma.to(x0).view(-1, *[1] * (x0.ndim - 1))
        target = progressive_target(self.teacher, y, sigma, mid, nxt, cond)
        x0_hat = self.denoiser(y, sigma, cond)
        err = ((x0_hat - target) ** 2).flatten(1).mean(1)
        return {"loss": (truncated_snr_weight(sigma).to(err) * err).mean()}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "fewstep": {"method": "progressive", "sampler": "ddim", "steps": self.steps,
                                               "schedule": self.config.sample.schedule,
                                               "sigmas": self.student_grid.tolist()}}


def halving_schedule(start: int) -> list[int]:
    """The step counts of successive rounds: ``start, start/2, ..., 1`` (``start`` a power of two)."""
    if start < 1 or 2 ** int(math.log2(start)) != start:
        raise ValueError(f"progressive distillation halves N down to 1: start must be a power of two, got {start}")
    return [start >> k for k in range(int(math.log2(start)) + 1)]
