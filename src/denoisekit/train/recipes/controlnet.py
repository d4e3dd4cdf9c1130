"""Train only a ControlNet or T2I-Adapter on a frozen base run (``train.recipe: controlnet``).

The diffusion recipe's data, condition, loss and previews, with three changes: the network starts from the
base run (``init.from_run``, required, recorded by path and hash and checked on resume), frozen; a control
module per the ``controlnet`` section (:class:`~denoisekit.train.controlnet_config.ControlNetSection`; Zhang
et al. 2023 or Mou et al. 2023, :mod:`denoisekit.models.controlnet`) is put on its U-Net, and it is all that
trains and all that checkpoints store; each batch's control images are computed from the batch
(:mod:`denoisekit.data.control`: Sobel edges of the image, the shapes' foreground mask or position heat maps)
and given as ``cond["control"]``. At the end the EMA module is written to ``RUN/controlnet.safetensors`` with
its config, signal and the base's weights hash, for ``denoisekit sample BASE --controlnet RUN --control
edges.png``.

A config::

    train: {recipe: controlnet, steps: 500}
    init:  {from_run: runs/shapes}             # the base; data, model and process sections as its own
    controlnet: {kind: controlnet, signal: edges}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...condition import merge_conditions
from ...data.control import SIGNAL_FIELDS, control_signal
from ...models.controlnet import CONTROL_FILE, build_control, find_unet, save_control, with_controls
from ...engine.recipe import Dependency
from ..build import build_denoiser
from ..latent import weights_sha256
from .diffusion import DiffusionRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine


class ControlNetRecipe(DiffusionRecipe):
    """The diffusion recipe on a frozen base with one trainable control module (see the module docstring)."""

    name = "controlnet"

    def dependencies(self) -> list[Dependency]:
        c = self.config
        if c.init.from_run is None:
            raise ValueError("train.recipe is 'controlnet' but init.from_run is not set (the base run to control)")
        if c.init.trainable:
            raise ValueError("train.recipe 'controlnet' trains the control module only: drop init.trainable")
        if c.latent.autoencoder is not None:
            raise ValueError("train.recipe 'controlnet' controls pixel-space bases only (latent.autoencoder is set)")
        return super().dependencies()

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Any:
        out = super().collate(items)
        for name in SIGNAL_FIELDS[self.config.controlnet.signal]:  # e.g. the shapes' label maps
            if all(isinstance(it.get(name), Tensor) for it in items):
                out[name] = torch.stack([it[name] for it in items])
        return out

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)  # the base run's weights, loaded per init.from_run
        base = modules["net"].requires_grad_(False)
        #: What ``sample --controlnet`` checks the base against: the hash generate()'s LoadedModel carries.
        self.base_sha256 = weights_sha256(build_denoiser(self.config, base))
        with torch.random.fork_rng(devices=[]):  # the new layers' initialisation: from train.seed
            torch.manual_seed(self.config.train.seed)
            self.control = build_control(find_unet(base), self.config.controlnet.control()).to(engine.device)
        net = with_controls(base, [self.control])
        prefix = next(name for name, m in net.named_modules() if m is self.control) + "."
        self.control_prefix = prefix
        self.delta = {k for k in net.state_dict() if k.startswith(prefix)}
        self.modules = {"net": net}
        return self.modules

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        control = control_signal(self.config.controlnet.signal, batch, x0)
        cond = merge_conditions(cond, {"control": control})
        return {"loss": self.config.loss(self.denoiser, x0, cond, gens).mean()}

    def state(self) -> dict[str, Any]:
        out = super().state()  # delta_of is set: the checkpoint holds only the control module's tensors
        out.pop("delta_of", None)
        return {**out, "controlnet_of": "init", "controlnet": self.config.controlnet.control().to_dict(),
                "signal": self.config.controlnet.signal, "base_sha256": self.base_sha256}

    def load_state(self, state: Mapping[str, Any], source: str) -> None:
        super().load_state(state, source)
        if state.get("base_sha256") not in (None, self.base_sha256):
            raise ValueError(f"{source}: the control module was trained on other base weights (sha256 "
                             f"{str(state['base_sha256'])[:12]}..., init.from_run now {self.base_sha256[:12]}...)")

    def finish(self, engine: Engine) -> None:
        super().finish(engine)
        ema = engine.ema_module("net")
        module = dict(ema.named_modules())[self.control_prefix[:-1]]
        save_control(module, engine.out / CONTROL_FILE, base_sha256=self.base_sha256,
                     signal=self.config.controlnet.signal)
