"""Rectified-flow reflow (``train.recipe: reflow``; Liu et al. 2023, "Flow straight and fast", Algorithm 1).

A k-rectified flow is trained on the (noise, sample) coupling of the (k-1)-rectified flow's ODE instead of
independent pairs: each step draws ``z ~ N(0, I)`` per sample (the engine's per-sample generators), solves the
frozen teacher's (``teacher.run``, a flow run) probability-flow ODE from ``z`` to ``x0 = ODE(z)`` with a
deterministic sampler of the generation core (``fewstep.coupling_sampler``, ``coupling_nfe``,
``coupling_schedule``), and regresses the student's flow on the straight line between the pair,
``x_t = (1 - t) x0 + t z`` with target velocity ``z - x0`` (``loss`` as configured: its noise-level
distribution and weighting; ``process.prediction: flow`` is the paper's). The pairs are made on the fly, so a
resumed or 2-process run makes the same ones (nothing but the generators' state is kept). The dataset gives
only the batch's conditions (a conditional teacher solves its ODE with the batch's, dropped, labels).

``fewstep.one_step: true`` trains at ``t = t_max`` only: Liu et al.'s distillation of the k-rectified flow
into one Euler step (their eq. 5 with the L2 metric). The straightness of teacher and student (Liu et al.
Def. 2.2) is :func:`denoisekit.eval.straightness.straightness`.

A config::

    train:   {recipe: reflow, steps: 2000}
    process: {name: flow, prediction: flow}
    teacher: {run: runs/digits-flow}          # the 1-rectified flow
    init:    {from_run: runs/digits-flow}     # the paper starts 2-RF from 1-RF's weights
    fewstep: {coupling_sampler: flow_heun, coupling_nfe: 32}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...engine.recipe import Dependency
from ...generation import Guidance, LoadedModel, generate, sampling_grid
from ...process import RectifiedFlow, start_std
from .distill import DistillRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine


@torch.no_grad()
def ode_coupling(model: LoadedModel, z: Tensor, cond: Any = None, *, sampler: str = "flow_heun", nfe: int = 32,
                 schedule: str = "auto") -> Tensor:
    """``x0 = ODE(z)`` ``(B, ...)``: ``model``'s probability-flow ODE solved by the deterministic ``sampler`` from
    the prior point of standard normal ``z`` (VE frame ``z * sigma_max``), without guidance and undecoded."""
    grid = sampling_grid(model, sampler=sampler, nfe=nfe, schedule=schedule)
    y = z * float(start_std(float(grid[0]), model.process))
    return generate(model, z.shape[0], cond, sampler=sampler, sigmas=grid, x_init=y, guidance=Guidance(),
                    batch_size=z.shape[0], decode=False, device=z.device, dtype=z.dtype)


def _noise(gens: Sequence[torch.Generator], shape: Sequence[int], device: Any) -> Tensor:
    """One standard normal draw of ``shape`` per sample, each from its own generator."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device)


class ReflowRecipe(DistillRecipe):
    """k-rectified flow on the teacher's ODE coupling (see the module docstring)."""

    name = "reflow"

    def dependencies(self) -> list[Dependency]:
        if self.config.teacher.run is None:
            raise ValueError("train.recipe is 'reflow' but teacher.run is not set (the rectified-flow run whose "
                             "ODE makes the noise-sample pairs)")
        if self.config.process.name != "flow":
            raise ValueError(f"train.recipe 'reflow' trains a rectified flow: process.name must be 'flow', got "
                             f"{self.config.process.name!r}")
        return super().dependencies()

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)
        if not isinstance(self.teacher.process, RectifiedFlow):
            raise ValueError(f"teacher.run {self.config.teacher.run!r} is a {self.teacher.process.name!r} process, "
                             f"not a rectified flow (process.name: flow): reflow rectifies a flow's own coupling")
        self.teacher_model = LoadedModel(self.teacher, tuple(self.image_shape))
        return modules

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        shape = batch["image"].shape[1:]
        cond = self.condition.training(batch, gens, engine.device)
        z = _noise(gens, shape, engine.device)
        f = self.config.fewstep
        x0 = ode_coupling(self.teacher_model, z, cond, sampler=f.coupling_sampler, nfe=f.coupling_nfe,
                          schedule=f.coupling_schedule)
        t = None
        if f.one_step:
            t = torch.full((z.shape[0],), float(self.denoiser.process.t_max), dtype=torch.float64, device=z.device)
        return {"loss": self.config.loss(self.denoiser, x0, cond, gens, eps=z, t=t).mean()}

    def state(self) -> dict[str, Any]:
        f = self.config.fewstep
        return {**super().state(), "fewstep": {"method": "reflow", "sampler": f.coupling_sampler,
                                               "nfe": f.coupling_nfe, "schedule": f.coupling_schedule,
                                               "one_step": f.one_step}}
