"""LCM-LoRA: guided consistency distillation of a run into a LoRA adapter (``train.recipe: lcm_lora``).

Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models", Algorithm 1) trained into a LoRA
adapter (Luo et al. 2023, "LCM-LoRA"): consistency distillation (Song et al. 2023, Algorithm 2) whose student
is the frozen base run plus one adapter (the ``lora`` recipe's: ``init.from_run``, the ``lora`` section, only
the adapter trains and is stored) under the ``consistency`` prediction, and whose teacher ODE step runs the
teacher under classifier-free guidance (the "augmented PF-ODE" of LCM's guided distillation):

- levels ``sigma_1 < ... < sigma_N`` of a Karras grid (``fewstep.levels``, ``fewstep.rho``), ``n ~ U{1..N-k}``
  with the skipping step ``k`` (``lcm.skip``, LCM Sec. 4.3);
- a guidance scale ``w ~ U[cfg_min, cfg_max]`` per sample (``lcm``; LCM Sec. 4.2; ``w = omega + 1``) and one
  ODE step (``fewstep.solver``) of the guided teacher ``D_u + w (D_c - D_u)`` from
  ``y_{n+k} = x0 + sigma_{n+k} z`` to ``y^_n``;
- the loss ``d(f(y_{n+k}, sigma_{n+k}), f-(y^_n, sigma_n))`` (``fewstep.metric``: L2 or pseudo-Huber), ``f-`` the
  student under stop-grad (``fewstep.mu: 0``, as diffusers' LCM-LoRA script) or an EMA of the adapter
  (``fewstep.mu > 0``, LCM's full-model distillation; only the adapter's tensors are kept, in
  ``recipe.safetensors``).

The student samples with guidance 1 (the guidance is in its weights) on the consistency sampler, at the 1-4
steps it was made for: ``denoisekit sample BASE --lora RUN/lora.safetensors --sampler consistency --nfe 4``.
``lora.safetensors`` records that it changes the prediction (``edm`` -> ``consistency``) and the sample
settings; loading it onto a model of another prediction is refused (:mod:`denoisekit.generation.lcm`).
The base must be an ``edm`` run: the ``consistency`` prediction feeds the network EDM's ``c_in y`` and
``c_noise`` and reads its output as EDM's ``F``, so the adapter only has to move ``F``.

A config (the base's, with)::

    train:   {recipe: lcm_lora, steps: 600}
    init:    {from_run: runs/digits}          # the base: its weights stay frozen
    teacher: {run: runs/digits}               # the ODE distilled (usually the base itself)
    process: {name: edm, prediction: consistency}
    lora:    {rank: 8, convs: true}
    fewstep: {levels: 1000, solver: heun, mu: 0}
    lcm:     {skip: 50, cfg_min: 1.5, cfg_max: 1.5}
    sample:  {sampler: consistency, nfe: 4, cfg_scale: 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...conditioning import condition_kind
from ...denoiser import DenoiserFn
from ...engine.checkpoint import load_delta
from ...generation.lcm import prediction_metadata
from ...guidance import ClassifierFreeGuidance
from ...losses import uniforms
from ..config import load_config
from ..run import RUN_CONFIG
from ..fewstep_config import Solver
from .consistency import ConsistencyDistillRecipe, consistency_distillation_loss, resolve_metric
from .lora import LoraRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine

BASE_PREDICTION = "edm"


def guidance_scales(gens: torch.Generator | Sequence[torch.Generator], n: int, lo: float, hi: float) -> Tensor:
    """``(n,)`` float64 scales uniform in ``[lo, hi]``: from each sample's own generator, or from one for all."""
    return lo + (hi - lo) * uniforms(n, gens)


def lcm_distillation_loss(student: DenoiserFn, target: DenoiserFn, teacher: DenoiserFn, x0: Tensor,
                          gens: torch.Generator | Sequence[torch.Generator], levels: Tensor, *, skip: int = 1,
                          cfg: tuple[float, float] = (1.0, 1.0), null_label: int | None = None,
                          solver: Solver = "heun", metric: str = "l2", c: float = 0.0, cond: Any = None) -> Tensor:
    """LCM's guided consistency distillation loss (Luo et al. 2023, Algorithm 1): per-example ``(B,)``, for data
    ``x0`` ``(B, ...)`` with condition ``cond``, a scale ``w ~ U[cfg]`` per sample (drawn first from ``gens``), the
    teacher under guidance ``w`` stepping ``skip`` of the increasing ``levels``; ``target`` is ``f-``."""
    w = guidance_scales(gens, x0.shape[0], *cfg).to(x0.device)
    guided = ClassifierFreeGuidance(teacher, w, null_label)  # one scale per sample
    return consistency_distillation_loss(student, target, guided, x0, gens, levels, solver=solver, metric=metric,
                                         c=c, cond=cond, skip=skip)


class LcmLoraRecipe(ConsistencyDistillRecipe, LoraRecipe):
    """Consistency distillation of a guided teacher into a LoRA on the base (see the module docstring). The MRO
    composes the parts: consistency distillation's grid, checks and target; the teacher of ``distill``; the
    adapter and delta checkpoints of ``lora``; the data, condition and previews of ``diffusion``."""

    name = "lcm_lora"

    def dependencies(self) -> list[Any]:
        c = self.config
        if c.lcm.guided and not condition_kind(c.condition.kind).guidable:
            raise ValueError(f"lcm.cfg_min/cfg_max ({c.lcm.cfg_min}, {c.lcm.cfg_max}) guide the teacher, but "
                             f"condition.kind {c.condition.kind!r} has no unconditional model (use 1, 1)")
        if c.lcm.skip >= c.fewstep.levels:
            raise ValueError(f"lcm.skip ({c.lcm.skip}) must be below fewstep.levels ({c.fewstep.levels}): the "
                             f"teacher steps from level n + skip to n")
        return super().dependencies()

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)
        c = self.config
        base = load_config(Path(c.init.from_run) / RUN_CONFIG).process
        if base.prediction != BASE_PREDICTION:
            raise ValueError(f"init.from_run {c.init.from_run!r} predicts {base.prediction!r}: an LCM-LoRA reads the "
                             f"base's output as EDM's F under the consistency c_skip / c_out, so the base must be an "
                             f"{BASE_PREDICTION!r} run")
        if replace(base, prediction=c.process.prediction) != c.process:
            raise ValueError(f"init.from_run {c.init.from_run!r} has process {base}, this run {c.process}: the same "
                             f"but for prediction {c.process.prediction!r}")
        return modules

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        f, lc, student = self.config.fewstep, self.config.lcm, self.denoiser
        target = student if self.target_denoiser is None else self.target_denoiser
        loss = lcm_distillation_loss(student, target, self.teacher, x0, gens, self.levels, skip=lc.skip,
                                     cfg=(lc.cfg_min, lc.cfg_max), null_label=self.num_classes, solver=f.solver,
                                     metric=resolve_metric(f.metric, self.name), c=self._c(), cond=cond)
        return {"loss": loss.mean()}

    # the EMA target is the base plus the adapter's EMA: keep only the adapter's tensors
    def extra_tensors(self) -> dict[str, Tensor]:
        return {k: v for k, v in super().extra_tensors().items() if k in (self.delta or ())}

    def load_extra_tensors(self, tensors: Mapping[str, Tensor], source: str) -> None:
        if self.target is not None:
            load_delta(self.target, tensors, f"{source} (the consistency target's adapter)")

    def state(self) -> dict[str, Any]:
        out, lc = super().state(), self.config.lcm
        return {**out, "fewstep": {**out["fewstep"], "method": self.name, "skip": lc.skip,
                                   "cfg": [lc.cfg_min, lc.cfg_max]}}

    def adapter_metadata(self) -> dict[str, str]:
        s = self.config.sample
        return prediction_metadata(self.config.process.prediction, BASE_PREDICTION,
                                   {"sampler": s.sampler, "nfe": s.nfe, "schedule": s.schedule,
                                    "cfg_scale": s.cfg_scale})
