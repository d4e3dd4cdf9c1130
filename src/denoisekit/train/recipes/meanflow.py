"""MeanFlow (``train.recipe: meanflow``; Geng et al. 2025): one network for every step count, from scratch.

The diffusion recipe with :class:`~denoisekit.train.meanflow.MeanFlowLoss` as its step: the network learns the
average velocity ``u(z_t, r, t)`` of a rectified flow through the MeanFlow identity (a JVP of the network per
sample with ``r < t``), and :mod:`denoisekit.samplers.meanflow` draws from it at any number of steps
(``denoisekit sample RUN --sampler meanflow --nfe 1``). No teacher: the run is an ordinary flow run whose
network also takes the interval ``t - r``; every other sampler sees its instantaneous velocity ``u(z, t, t)``.

Why MeanFlow and not shortcut models (Frans et al. 2025), the other method that trains one model for every step
count: shortcut models condition on a step size from a dyadic set (1/128 ... 1) and train by bootstrapping two
half steps, so they sample at power-of-two step counts; MeanFlow's ``r`` is continuous, so any grid works, and its
target is one closed-form identity (no bootstrap schedule). Geng et al. report ImageNet 256 FID 3.43 at 1 NFE and
2.20 at 2 (DiT-XL/2, from scratch), 2.92 at 1 NFE on CIFAR-10 (U-Net).

A config (``configs/digits-meanflow.yaml``)::

    train:   {recipe: meanflow, steps: 3000}
    process: {name: flow, prediction: flow}
    model:   {name: unet, second_time: true, ...}
    loss:    {noise_levels: logit_normal, p_mean: -0.4, p_std: 1.0}   # the (t, r) distribution
    fewstep: {interval_ratio: 0.25, adaptive_p: 1.0, adaptive_c: 0.001}
    sample:  {sampler: meanflow, nfe: 1, cfg_scale: 1}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...engine.recipe import Dependency
from ..build import build_process
from ..meanflow import MeanFlowLoss, check_meanflow
from .diffusion import DiffusionRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine


def meanflow_loss(config: Any) -> MeanFlowLoss:
    """The run's :class:`MeanFlowLoss`: ``(t, r)`` by its ``loss`` section's noise levels, the rest from ``fewstep``."""
    lo, f = config.loss, config.fewstep
    return MeanFlowLoss(noise_levels=lo.noise_levels, p_mean=lo.p_mean, p_std=lo.p_std,
                        interval_ratio=f.interval_ratio, adaptive_p=f.adaptive_p, adaptive_c=f.adaptive_c)


class MeanFlowRecipe(DiffusionRecipe):
    """MeanFlow from the data alone (see the module docstring)."""

    name = "meanflow"
    stats = ("loss", "mse")

    def __init__(self, config: Any):
        super().__init__(config)
        self.meanflow = meanflow_loss(config)

    def dependencies(self) -> list[Dependency]:
        c = self.config
        check_meanflow(build_process(c), c.process.prediction, c.process.time_input, c.model.options.get("second_time"))
        if c.loss.weighting != "simple":
            raise ValueError(f"train.recipe 'meanflow' weighs each sample by its adaptive weight (fewstep.adaptive_p, "
                             f"adaptive_c), not loss.weighting: set loss.weighting: simple (got {c.loss.weighting!r})")
        if c.condition.kind not in ("none", "class"):
            raise ValueError(f"train.recipe 'meanflow' supports condition.kind none or class (the network takes the "
                             f"second time input directly), got {c.condition.kind!r}")
        return super().dependencies()

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        weighted, sq = self.meanflow.terms(self.denoiser, x0, cond, gens)
        return {"loss": weighted.mean(), "mse": sq.detach().mean()}

    def state(self) -> dict[str, Any]:
        loss = self.meanflow
        return {**super().state(), "fewstep": {"method": "meanflow", "interval_ratio": loss.interval_ratio,
                                               "adaptive_p": loss.adaptive_p, "adaptive_c": loss.adaptive_c,
                                               "noise_levels": loss.noise_levels, "p_mean": loss.p_mean,
                                               "p_std": loss.p_std}}
