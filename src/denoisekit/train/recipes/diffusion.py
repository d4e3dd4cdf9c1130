"""The diffusion recipe: a denoiser trained with a :class:`~denoisekit.losses.DiffusionLoss`, pixel or latent.

It builds the dataset (the autoencoder's scaled latents with ``latent.autoencoder``), the condition kind and
the network of a :class:`~denoisekit.train.config.Config`; trains every parameter of the network (started
from another run's weights with ``init.from_run``) with one AdamW and an EMA per ``ema``; one step is the
loss of a micro-batch; it saves the network and its EMA, and previews EMA sample grids.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...generation import LoadedModel, generate
from ...io import load_tensors
from ...prediction import Denoiser
from ..build import build_dataset, build_denoiser, build_model
from ...engine.checkpoint import load_delta, load_weights
from ...conditioning import collate, condition_kind
from ..config import Config, config_to_dict, load_config
from ..latent import check_latent_resume, latent_dataset
from ...engine.lineage import run_checkpoint
from ...engine.recipe import Dependency, EMASpec, Recipe
from ...eval.plotting import save_grid

if TYPE_CHECKING:
    from ...engine.loop import Engine

SAMPLES = "samples"


class DiffusionRecipe(Recipe):
    """Denoising diffusion / flow matching of one network (see the module docstring)."""

    name = "diffusion"
    resumable = Recipe.resumable + ("sample.", "latent.cache")

    def __init__(self, config: Config):
        super().__init__(config)
        self.autoencoder: Any = None
        self.image_shape: tuple[int, ...] = ()
        self.num_classes: int | None = None
        self.condition: Any = None
        self.delta: set[str] | None = None  # with init.trainable: the names of the tensors this run trains

    # ---------------------------------------------------------------------------- config and data
    def config_to_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return config_to_dict(load_config(path))

    uses_teacher = False

    def dependencies(self) -> list[Dependency]:
        if self.config.teacher.run is not None and not self.uses_teacher:
            raise ValueError(f"teacher.run is set but train.recipe {self.name!r} learns from the data, not a "
                             f"teacher (train.recipe: distill does)")
        init = self.config.init
        return [Dependency("init", init.from_run, init.weights, "init.from_run")] if init.from_run is not None else []

    def build_dataset(self) -> Any:
        return build_dataset(self.config)

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Any:
        return collate(items, fields=self.condition.fields)

    def check_data(self, dataset: Any) -> None:
        c = self.config
        if len(dataset) < 1:
            raise ValueError(f"dataset {c.data.name!r} is empty")
        item = dataset[0]
        if not isinstance(item, Mapping) or not isinstance(item.get("image"), Tensor):
            raise ValueError(f"dataset {c.data.name!r} must yield dicts with an 'image' tensor, got {type(item).__name__}"
                             + (f" with keys {sorted(item)}" if isinstance(item, Mapping) else ""))
        kind = condition_kind(c.condition.kind)  # the fields, classes and shapes the condition reads
        kind(c.condition_options(), num_classes=c.num_classes).check_data(dataset, item, c)

    # ---------------------------------------------------------------------------- modules
    def build(self, engine: Engine) -> dict[str, nn.Module]:
        c = self.config
        if c.latent.autoencoder is not None:  # latent diffusion: the data are the autoencoder's latents
            with engine.acc.main_process_first():  # the main process fills the disk cache; the others read it
                engine.dataset = latent_dataset(c, engine.dataset, device=engine.device,
                                                progress=engine.progress and engine.main)
            self.autoencoder = engine.dataset.autoencoder
        self.dataset = engine.dataset
        self.image_shape, self.num_classes = tuple(engine.dataset[0]["image"].shape), c.num_classes
        self.condition = condition_kind(c.condition.kind)(c.condition_options(), dropout=c.condition.dropout,
                                                          num_classes=self.num_classes, image_shape=self.image_shape)
        net = build_model(c)
        if c.init.from_run is not None:
            load_init_weights(net, c.init.from_run, c.init.weights)
        if c.init.trainable:
            self.delta = freeze_except(net, c.init.trainable)
        self.modules = {"net": net.to(engine.device)}
        return self.modules

    def ema(self) -> list[EMASpec]:
        e = self.config.ema
        return [EMASpec("net", e.kind, e.decay, e.sigma_rel)]

    def check_model(self, engine: Engine) -> None:
        """One forward pass on a real image (through the EMA copy: the trained network's state is untouched),
        so a shape or class mismatch fails now and says why."""
        c, device = self.config, engine.device
        self.condition.check_model(c)  # the network's inputs the condition needs (model.concat_channels)
        item = self.dataset[0]
        x = item["image"][None].float().to(device)
        gens = [torch.Generator().manual_seed(0)]
        cond = self.condition.training(collate([item], self.condition.fields), gens, x.device)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                build_denoiser(c, engine.ema_module("net"))(x, torch.ones(1, dtype=torch.float64), cond)
        except (ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"model {c.model.name!r} cannot denoise the data's images of shape "
                             f"{tuple(x.shape[1:])} (cond {cond}): {e}") from None

    @property
    def denoiser(self) -> Denoiser:
        """The denoiser of the trained (process-wrapped) network: what the loss backpropagates through."""
        return build_denoiser(self.config, self.module("net"))

    def ema_denoiser(self, engine: Engine) -> Denoiser:
        return build_denoiser(self.config, engine.ema_module("net"))

    # ---------------------------------------------------------------------------- one step
    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        return {"loss": self.config.loss(self.denoiser, x0, cond, gens).mean()}

    # ---------------------------------------------------------------------------- saving
    def saved(self, name: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return dict(tensors) if self.delta is None else {k: v for k, v in tensors.items() if k in self.delta}

    def load_module(self, name: str, module: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
        if self.delta is None:
            return super().load_module(name, module, tensors, source)
        if set(tensors) != self.delta:
            raise ValueError(f"{source}: holds {len(tensors)} trained tensors, init.trainable selects {len(self.delta)}")
        load_delta(module, tensors, source)

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image_shape": list(self.image_shape),
                               "classes": [str(c) for c in getattr(self.dataset, "classes", None) or []]}
        if self.delta is not None:
            out["delta_of"] = "init"
        if self.autoencoder is not None:
            out["latent"] = self.dataset.record
        return out

    def load_state(self, state: Mapping[str, Any], source: str) -> None:
        if self.autoencoder is not None:
            check_latent_resume(Path(source), state, self.dataset.record)

    # ---------------------------------------------------------------------------- outputs
    def preview_every(self) -> int:
        return self.config.sample.every

    def preview(self, engine: Engine) -> None:
        self.sample_grid(engine)

    def sample_grid(self, engine: Engine) -> Path | None:
        """EMA samples to ``samples/step_*.png`` and ``samples.png``: one row per class (class models), per
        prompt (text models; ``sample.prompts`` or the first dataset captions), or rows of degraded input,
        sample and original (image-conditioned models)."""
        if self.config.sample.n == 0 or not engine.main:
            return None
        s = self.config.sample  # the condition kind lays out the grid (rows of classes, prompts, inputs)
        view = self.condition.preview(s.n, self.dataset, engine.device, seed=s.seed, prompts=s.prompts)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            rows = view.rows(generate(self.loaded_model(engine), view.n, view.cond, device=engine.device))
        path = engine.out / SAMPLES / f"step_{engine.step:08d}.png"
        path.parent.mkdir(exist_ok=True)
        labels = list(view.row_labels) if len(view.row_labels) == len(rows) else None
        for target in (path, engine.out / "samples.png"):
            save_grid(rows, target, labels=labels, columns=view.nrow)
        return path

    def loaded_model(self, engine: Engine) -> LoadedModel:
        """The EMA network as a :class:`~denoisekit.generation.LoadedModel` (what previews generate from)."""
        classes = tuple(str(c) for c in getattr(self.dataset, "classes", None) or ())
        return LoadedModel(self.ema_denoiser(engine), self.image_shape, condition=self.condition,
                           decoder=self.autoencoder, classes=classes, num_classes=self.num_classes,
                           defaults=self.config.sample, name=str(engine.out), config=self.config)


def load_init_weights(net: nn.Module, run: str | os.PathLike[str], weights: str = "ema") -> None:
    """Start ``net`` from run ``run``'s latest ``weights`` (``ema`` or ``model``); a network of another shape
    is one line naming the run and the first tensors that differ."""
    ckpt = run_checkpoint(run, "init.from_run")
    path = ckpt / f"{weights}.safetensors"
    try:
        load_weights(net, load_tensors(path), f"init.from_run {str(run)!r} ({path.name} of {ckpt.name})")
    except FileNotFoundError:
        raise FileNotFoundError(f"init.from_run {str(run)!r}: {path} is missing") from None


def freeze_except(net: nn.Module, patterns: Sequence[str]) -> set[str]:
    """Freeze every parameter of ``net`` whose name matches none of the glob ``patterns``; return the names
    that stay trainable (an error lists some names when a pattern matches nothing)."""
    names = [n for n, _ in net.named_parameters()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"init.trainable: {pat!r} matches no parameter (some are: {', '.join(names[:6])}, ...)")
    keep = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    for n, p in net.named_parameters():
        p.requires_grad_(n in keep)
    return keep
