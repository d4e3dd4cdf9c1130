"""Train only a LoRA adapter on a frozen base run (``train.recipe: lora``; Hu et al. 2022).

The diffusion recipe's data, condition, loss and previews, with two changes: the network starts from the
base run (``init.from_run``, required, recorded by path and hash and checked on resume) and gets one adapter
per the ``lora`` section (:class:`~denoisekit.train.lora_config.LoraSection`), whose weights are all that
trains and all that checkpoints store. At the end the EMA adapter is written to ``RUN/lora.safetensors``
with its config and the base's weights hash, for ``denoisekit sample BASE --lora RUN/lora.safetensors:0.8``
(:mod:`denoisekit.models.lora_io`; ``--lora RUN`` finds it too).

A config::

    train: {recipe: lora, steps: 500}
    init:  {from_run: runs/shapes}         # the base; data, model and process sections as its own
    lora:  {rank: 4, alpha: 4, targets: [qkv, q, kv, proj]}
    data:  {name: shapes, style: striped}  # what the adapter should learn
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...engine.recipe import Dependency
from ...models import lora
from ...models.lora_io import ADAPTER_FILE, save_adapter
from ..build import build_denoiser
from ..latent import weights_sha256
from .diffusion import DiffusionRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine

ADAPTER = "default"


class LoraRecipe(DiffusionRecipe):
    """The diffusion recipe on a frozen base with one trainable LoRA adapter (see the module docstring)."""

    name = "lora"

    def dependencies(self) -> list[Dependency]:
        c = self.config
        if c.init.from_run is None:
            raise ValueError("train.recipe is 'lora' but init.from_run is not set (the base run to adapt)")
        if c.init.trainable:
            raise ValueError("train.recipe 'lora' trains the adapter only: drop init.trainable")
        return super().dependencies()

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)  # the base run's weights, loaded per init.from_run
        net = modules["net"]
        #: What ``sample --lora`` checks the base against: the hash generate()'s LoadedModel carries.
        self.base_sha256 = weights_sha256(build_denoiser(self.config, net))
        with torch.random.fork_rng(devices=[]):  # A's initialisation: from train.seed, not the global state
            torch.manual_seed(self.config.train.seed)
            lora.add_adapter(net, self.config.lora.adapter(), ADAPTER)
        self.delta = {k for k in net.state_dict() if "lora_" in k}
        return modules

    def state(self) -> dict[str, Any]:
        out = super().state()  # delta_of is set: the checkpoint holds only the adapter's tensors
        out.pop("delta_of", None)
        return {**out, "lora_of": "init", "lora": self.config.lora.adapter().to_dict(),
                "base_sha256": self.base_sha256}

    def load_state(self, state: Mapping[str, Any], source: str) -> None:
        super().load_state(state, source)
        if state.get("base_sha256") not in (None, self.base_sha256):
            raise ValueError(f"{source}: the adapter was trained on other base weights (sha256 "
                             f"{str(state['base_sha256'])[:12]}..., init.from_run now {self.base_sha256[:12]}...)")

    def adapter_metadata(self) -> dict[str, str]:
        """What ``lora.safetensors`` records besides the adapter and its base (none here; an LCM-LoRA's prediction)."""
        return {}

    def finish(self, engine: Engine) -> None:
        super().finish(engine)
        save_adapter(engine.ema_module("net"), engine.out / ADAPTER_FILE, ADAPTER, base_sha256=self.base_sha256,
                     metadata=self.adapter_metadata())
