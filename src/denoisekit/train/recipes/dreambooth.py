"""DreamBooth (``train.recipe: dreambooth``; Ruiz et al. 2023): fine-tune a text-to-image run on a few images
of one subject, named by a rare identifier, with the class-specific prior-preservation loss.

Before training, the base (``init.from_run``, required) generates ``dreambooth.num_class`` class images from
``dreambooth.class_prompt`` through the generation core (:func:`~denoisekit.generation.generate`, sample ``i``
from seed ``class_seed + i``: the same images on every process and every resume). One step's loss is

    L = mean_i w(sigma) ||D(x_i + n; c_inst) - x_i||^2  +  lambda * mean_j w(sigma) ||D(x'_j + n'; c_class) - x'_j||^2

with the instance images ``x_i`` (the dataset, captioned ``dreambooth.instance_prompt``) and, per instance,
one class image ``x'_j`` drawn by that sample's generator (the run's loss, noise levels and weighting for
both). ``dreambooth.lora: false`` trains every weight of the base; ``true`` trains only a LoRA adapter per the
``lora`` section (:class:`~denoisekit.train.recipes.lora.LoraRecipe`'s storage: ``RUN/lora.safetensors``).

A config::

    train: {recipe: dreambooth, steps: 400}
    init:  {from_run: runs/shapes-text}
    data:  {name: shapes, subject: 1.0, max_shapes: 1, length: 4}     # 4 instance images
    dreambooth: {instance_prompt: "a large sks star", class_prompt: "a large orange star", num_class: 32,
                 prior_weight: 1.0, lora: true}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...engine.recipe import Dependency
from ...generation import generate
from .diffusion import DiffusionRecipe
from .lora import LoraRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine


def class_images(base_run: Any, prompt: str, n: int, seed: int, device: Any = "cpu") -> Tensor:
    """``n`` images ``(n, C, H, W)`` of run ``base_run`` for ``prompt``, sample ``i`` from seed ``seed + i``
    (the run's sampler defaults): DreamBooth's class images."""
    from ..run import load_model

    model = load_model(base_run, device=device)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        return generate(model, n, {"text": [prompt] * n}, seed=seed, device=device).float()


class DreamBoothRecipe(LoraRecipe):
    """Instance fine-tuning with prior preservation, full or LoRA (see the module docstring)."""

    name = "dreambooth"

    @property
    def _lora(self) -> bool:
        return self.config.dreambooth.lora

    def dependencies(self) -> list[Dependency]:
        c = self.config
        if c.init.from_run is None:
            raise ValueError("train.recipe is 'dreambooth' but init.from_run is not set (the base run to fine-tune)")
        if c.condition.kind != "text":
            raise ValueError(f"train.recipe 'dreambooth' needs a text run (condition.kind: text), got {c.condition.kind!r}")
        if c.dreambooth.prior_weight > 0 and not c.dreambooth.class_prompt.strip():
            raise ValueError("dreambooth.class_prompt is empty: the prior-preservation loss needs the class prompt "
                             "(or dreambooth.prior_weight: 0)")
        return super().dependencies() if self._lora else DiffusionRecipe.dependencies(self)

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine) if self._lora else DiffusionRecipe.build(self, engine)
        d = self.config.dreambooth
        self.class_x: Tensor | None = None
        if d.prior_weight > 0:
            self.class_x = class_images(self.config.init.from_run, d.class_prompt, d.num_class, d.class_seed,
                                        engine.device)
            if tuple(self.class_x.shape[1:]) != self.image_shape:
                raise ValueError(f"the base's class images are {tuple(self.class_x.shape[1:])}, the instance images "
                                 f"{self.image_shape}: use the base's data size")
        return modules

    def losses(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        """``instance`` and (with prior preservation) ``prior``: the two mean losses of one micro-batch."""
        c, d, device = self.config, self.config.dreambooth, engine.device
        captions = list(batch["caption"]) if d.instance_prompt is None else [d.instance_prompt] * len(batch["caption"])
        x0 = batch["image"].to(device, torch.float32)
        cond = self.condition.training({**batch, "caption": captions}, gens, device)
        out = {"instance": c.loss(self.denoiser, x0, cond, gens).mean()}
        if self.class_x is not None:
            pick = torch.stack([torch.randint(len(self.class_x), (), generator=g) for g in gens])
            xc = self.class_x[pick.to(self.class_x.device)].to(device)
            ccond = self.condition.training({**batch, "caption": [d.class_prompt] * len(xc)}, gens, device)
            out["prior"] = c.loss(self.denoiser, xc, ccond, gens).mean()
        return out

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        out = self.losses(batch, gens, engine)
        loss = out["instance"] + self.config.dreambooth.prior_weight * out["prior"] if "prior" in out \
            else out["instance"]
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}}

    def state(self) -> dict[str, Any]:
        out = super().state() if self._lora else DiffusionRecipe.state(self)
        return {**out, "dreambooth": {"class_prompt": self.config.dreambooth.class_prompt,
                                      "num_class": self.config.dreambooth.num_class}}

    def load_state(self, state: Mapping[str, Any], source: str) -> None:
        return super().load_state(state, source) if self._lora else DiffusionRecipe.load_state(self, state, source)

    def finish(self, engine: Engine) -> None:
        return super().finish(engine) if self._lora else DiffusionRecipe.finish(self, engine)
