"""Diffusion training from a config: :class:`Trainer` is the engine (:mod:`denoisekit.engine.loop`) running the
recipe that ``train.recipe`` names (:data:`~denoisekit.train.recipes.RECIPES`; default ``diffusion``), on
Hugging Face ``accelerate``, for one process or many.

``train_from_config("configs/digits-unet.yaml", "runs/digits")`` writes a run directory::

    config.yaml               the resolved config (enough to rebuild everything: see load_run)
    checkpoints/step_*/       safetensors weights + JSON state, the last train.keep_last kept
    log.csv, loss.png         step, loss, lr, grad norm, skipped steps, images/s; the loss curve
    metrics.csv               values returned by the metrics hook (step, name, value)
    samples.png, samples/     EMA sample grids (the latest, and one per sampling step)
    tb/                       TensorBoard events (when tensorboard is installed)

With ``latent.autoencoder`` set the same loop trains latent diffusion (:mod:`denoisekit.train.latent`):
the dataset's images become the autoencoder's scaled latents and sample grids are decoded.

The same code runs under ``accelerate launch --multi_gpu --num_processes N`` (on CPUs too: each
process then uses gloo). ``train.batch_size`` is the global batch of one optimiser step; it is split
into ``grad_accum`` micro-batches and each micro-batch over the processes. Every random draw of a
step is a function of ``(train.seed, step, sample index in the global batch)``: the data order is
an endless stream of seeded per-epoch permutations, and each sample's noise level, noise and label
drop come from its own generator. So 1 process and N processes see the same samples with the same
noise (only float reduction order differs), and a resumed run continues bit for bit: the
checkpoint holds the data position, optimiser, LR scheduler, EMA and every process's RNG states.

A step whose loss or gradient norm is NaN/inf (on any process) changes nothing and is counted;
``train.max_nan_steps`` of them in a row stop the run with :class:`TrainingDiverged` and leave the
last checkpoint as it was.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._utils import lookup
from ..prediction import Denoiser
from .config import (Config, apply_overrides, config_from_dict, config_to_dict, data_defaults, load_config,
                     warmup_warning)
from ..engine.loop import Engine
from .model_card import write_model_card
from .recipes import RECIPES
from .summary import StepTimer, startup_summary

#: ``metrics(ema_denoiser, step) -> {name: value}``, called with each sample grid (main process only).
MetricsHook = Callable[[Denoiser, int], Mapping[str, float]]


class Trainer(Engine):
    """The engine over the config's recipe; set up a run (fresh or resumed) in ``__init__``, :meth:`fit` trains it."""

    def __init__(self, config: Config, out_dir: str | os.PathLike[str], *, resume: bool = False,
                 metrics: MetricsHook | None = None, progress: bool = True):
        config, self.notes = data_defaults(config)  # e.g. data.size from a folder's images
        message = warmup_warning(config.optim.warmup_steps, config.train.steps)
        if message is not None:
            warnings.warn(message, stacklevel=2)
        recipe = lookup("train.recipe", RECIPES, config.train.recipe)(config)  # a registry plugins may extend
        hook = None if metrics is None else (lambda eng: metrics(recipe.ema_denoiser(eng), eng.step))
        super().__init__(recipe, out_dir, resume=resume, progress=progress, metrics=hook)
        self.config = config
        self.timer: StepTimer | None = None

    def fit(self, stop_at: int | None = None) -> Path:
        """Print the start-up summary (with progress, main process), then train (see :meth:`Engine.fit`)."""
        tc = self.config.train
        if self.progress and self.main and self.step < tc.steps:
            r = self.recipe
            lines = startup_summary(self.config, self.dataset, r.image_shape, r.modules, r.trained(), step=self.step,
                                    device=self.device, notes=self.notes)
            tqdm.write("\n".join(lines))
            end = tc.steps if stop_at is None else min(stop_at, tc.steps)
            every = r.preview_every()
            self.timer = StepTimer(self.step, end, every if 0 < every < end else 0)
        first, cpu0 = self.step, time.process_time()
        out = super().fit(stop_at)
        if self.main and first < tc.steps <= self.step:  # training finished here: the run's model card
            write_model_card(out, cpu_seconds=time.process_time() - cpu0)
        return out

    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        out = super().train_step()
        if self.timer is not None:
            line = self.timer.record(self.step, time.perf_counter() - start)
            if line is not None:
                tqdm.write(line)
        return out

    # What callers of the diffusion trainer read (benchmarks, tests): views of the recipe's parts.
    @property
    def raw_net(self) -> Any:
        return self.recipe.modules["net"]

    @property
    def net(self) -> Any:
        return self.recipe.module("net")

    @property
    def ema(self) -> Any:
        return self.emas["net"]

    @property
    def denoiser(self) -> Denoiser:
        return self.recipe.denoiser

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.recipe.image_shape

    @property
    def num_classes(self) -> int | None:
        return self.recipe.num_classes

    @property
    def condition(self) -> Any:
        return self.recipe.condition

    @property
    def autoencoder(self) -> Any:
        return self.recipe.autoencoder

    def ema_denoiser(self) -> Denoiser:
        return self.recipe.ema_denoiser(self)

    def sample_grid(self) -> Path | None:
        return self.recipe.sample_grid(self)


def train_from_config(config: Config | str | os.PathLike[str] | None, out_dir: str | os.PathLike[str], *,
                      overrides: Sequence[str] = (), resume: bool = False, progress: bool = True,
                      metrics: MetricsHook | None = None) -> Path:
    """Train per a :class:`Config` or YAML file (with dotted ``overrides``) into ``out_dir``; return it.

    ``resume=True`` continues from the latest checkpoint in ``out_dir`` (and starts afresh when there
    is none); ``config=None`` with ``resume=True`` reuses the run's own ``config.yaml``.
    """
    if config is None:
        if not resume:
            raise ValueError("a config is required unless resuming (the run's config.yaml is used then)")
        config = Path(out_dir) / "config.yaml"
    if isinstance(config, Config):
        cfg = config_from_dict(apply_overrides(config_to_dict(config), overrides)) if overrides else config
    else:
        cfg = load_config(config, overrides)
    return Trainer(cfg, out_dir, resume=resume, metrics=metrics, progress=progress).fit()
