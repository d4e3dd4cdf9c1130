"""A recipe: what one kind of training run builds, trains, computes per step and saves.

The engine (:mod:`denoisekit.engine.loop`) owns everything every run needs once: processes, the seeded
resumable data stream, gradient accumulation, the NaN/inf policy, EMA, logs and the loss curve, progress,
atomic checkpoints with keep-last-K and exact resume, and the runs a run depends on. A recipe fills in the
rest by overriding the methods of :class:`Recipe`:

==========================  =========================================================================
method                      says
==========================  =========================================================================
``build_dataset``           the training items (dicts; ``collate`` batches them)
``build(engine)``           every module of the run (trained or frozen) as ``{name: module}``
``optimizers``              which parameters train, grouped into one or more AdamW optimisers
``ema``                     which modules keep an exponential moving average, and how
``step(batch, gens, eng)``  one micro-batch's losses: ``{"loss": scalar to backpropagate, ...stats}``
``weights / load_weights``  what a checkpoint stores (an adapter recipe: only the adapter)
``state / load_state``      JSON facts for ``state.json`` (image shape, class names, ...)
``extra_tensors``           tensor state a resume needs besides weights (``recipe.safetensors``)
``preview / finish``        a sample grid now and then; work after the last step (export, metrics)
==========================  =========================================================================

Every random draw of a step comes from ``gens``, one generator per sample of the micro-batch seeded by
``(train.seed, step, index of the sample in the global batch)``, so 1 process equals N and a resumed run
continues bit for bit. A recipe's config has a ``train`` section like
:class:`~denoisekit.train.config.TrainConfig` and an ``optim`` section like
:class:`~denoisekit.train.config.OptimConfig`; ``config_to_dict`` / ``save_config`` write it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .loop import Engine


@dataclass
class OptimizerSpec:
    """One AdamW optimiser: its parameters (or param-group dicts with their own ``lr``) and the ``optim``
    section giving betas, eps, weight decay, LR warm-up and schedule; ``clip`` the parameters whose global
    gradient norm is clipped to ``optim.grad_clip`` (default: all of this optimiser's parameters).

    ``phase`` orders alternating updates within one step: the optimisers of the lowest phase step first, after
    a ``Recipe.step`` pass over the step's micro-batches with ``engine.phase`` set to it, then the next phase's
    after another pass over the same micro-batches (a GAN: discriminator in phase 0, generator in phase 1,
    Goodfellow et al. 2014, Algorithm 1). Optimisers of one phase update together, as one."""

    params: Sequence[Any]
    optim: Any
    clip: Sequence[nn.Parameter] | None = None
    phase: int = 0


@dataclass
class EMASpec:
    """An averaged copy of ``modules[name]``: ``kind``, ``decay``, ``sigma_rel`` as in :class:`~denoisekit.engine.ema.EMA`."""

    name: str
    kind: str = "warmup"
    decay: float = 0.9999
    sigma_rel: float = 0.05


@dataclass
class Dependency:
    """A run this run depends on: ``role`` (``init``, ``teacher``, ``base``), its directory, which weights, and the
    config ``key`` that named it (for error messages)."""

    role: str
    run: str
    weights: str = "ema"
    key: str | None = None


class Recipe:
    """Base recipe: override what differs (see the module docstring). ``self.modules`` is filled by
    :meth:`build`; the engine puts the prepared (process-wrapped) trained modules in ``self.wrapped``."""

    name: ClassVar[str] = "recipe"
    #: Dotted config keys (prefixes) that may change when resuming: they do not alter the trained weights.
    resumable: ClassVar[tuple[str, ...]] = ("train.steps", "train.log_every", "train.save_every", "train.keep_last",
                                            "train.max_nan_steps", "data.num_workers")
    #: Columns of ``log.csv`` besides step, lr, grad_norm, nan_skipped, images_per_s, elapsed_s.
    stats: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(self, config: Any):
        self.config = config
        self.modules: dict[str, nn.Module] = {}
        self.wrapped: dict[str, nn.Module] = {}

    # ---------------------------------------------------------------------------- config and data
    def config_to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """The dict layout of the config saved in a run directory (for resume checks)."""
        raise NotImplementedError

    def save_config(self, path: str | os.PathLike[str]) -> None:
        from ..io import write_text_atomic
        from ..options import to_yaml

        write_text_atomic(path, to_yaml(self.config_to_dict()))

    def build_dataset(self) -> Any:
        raise NotImplementedError

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Any:
        return {"image": torch.stack([torch.as_tensor(it["image"]) for it in items])}

    def check_data(self, dataset: Any) -> None:
        """Fail early, naming the dataset, when its items do not fit the run."""
        if len(dataset) < 1:
            raise ValueError(f"dataset {getattr(self.config.data, 'name', '?')!r} is empty")

    def dependencies(self) -> list[Dependency]:
        """The runs this run starts from or learns from (hashed and recorded by the engine)."""
        return []

    # ---------------------------------------------------------------------------- modules
    def build(self, engine: Engine) -> dict[str, nn.Module]:
        raise NotImplementedError

    def check_model(self, engine: Engine) -> None:
        """After :meth:`build` and the EMA copies, before training: fail early when the modules do not fit the data."""

    def trained(self) -> list[str]:
        """Names of the modules with trainable parameters (wrapped for multi-process training)."""
        return [k for k, m in self.modules.items() if any(p.requires_grad for p in m.parameters())]

    def optimizers(self) -> list[OptimizerSpec]:
        params = [p for k in self.trained() for p in self.modules[k].parameters() if p.requires_grad]
        return [OptimizerSpec(params, self.config.optim)]

    def ema(self) -> list[EMASpec]:
        return []

    def module(self, name: str) -> nn.Module:
        """The module to call in a step: the process-wrapped one when it trains (its gradients sync)."""
        return self.wrapped.get(name, self.modules[name])

    # ---------------------------------------------------------------------------- one step
    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        """Losses of one micro-batch: ``"loss"`` is backpropagated by the engine (unless the recipe called
        ``engine.backward`` itself and returns ``"loss"`` detached); the rest are logged means. A recipe with
        several optimiser phases (:attr:`OptimizerSpec.phase`) is called once per phase and reads ``engine.phase``."""
        raise NotImplementedError

    def after_update(self, engine: Engine) -> None:
        """Called after each successful optimiser step (EMA is updated by the engine before this)."""

    # ---------------------------------------------------------------------------- saving
    def saved(self, name: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What of module ``name``'s state (and of its EMA) a checkpoint keeps: all of it, unless the recipe
        trains only part of a base (then only that part: a delta over the base run)."""
        return dict(tensors)

    def load_module(self, name: str, module: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
        """Inverse of :meth:`saved` for one module (or its EMA copy)."""
        from .checkpoint import load_weights

        load_weights(module, tensors, source)

    def weights(self) -> dict[str, Tensor]:
        """The tensors of ``model.safetensors``: one trained module unprefixed, several as ``name.key``."""
        names = self.trained()
        if len(names) == 1:
            return self.saved(names[0], self.modules[names[0]].state_dict())
        return {f"{n}.{k}": v for n in names for k, v in self.saved(n, self.modules[n].state_dict()).items()}

    def load_weights(self, tensors: Mapping[str, Tensor], source: str) -> None:
        names = self.trained()
        if len(names) == 1:
            self.load_module(names[0], self.modules[names[0]], tensors, source)
            return
        for n in names:
            part = {k[len(n) + 1:]: v for k, v in tensors.items() if k.startswith(n + ".")}
            self.load_module(n, self.modules[n], part, f"{source} ({n})")

    def extra_tensors(self) -> dict[str, Tensor]:
        """Tensors of the recipe's own training state (not weights a run is loaded from) that a checkpoint keeps
        in ``recipe.safetensors`` for exact resume: consistency distillation's target network. Default none."""
        return {}

    def load_extra_tensors(self, tensors: Mapping[str, Tensor], source: str) -> None:
        """Inverse of :meth:`extra_tensors` on resume (``tensors`` is empty for a checkpoint without the file)."""
    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: Mapping[str, Any], source: str) -> None:
        pass

    # ---------------------------------------------------------------------------- outputs
    def preview_every(self) -> int:
        """Steps between previews (0: only at the end)."""
        return 0

    def preview(self, engine: Engine) -> None:
        """A sample grid of the current model (main process only; default: none)."""

    def finish(self, engine: Engine) -> None:
        """Work after the last step on the main process (export, final metrics; default: none)."""
