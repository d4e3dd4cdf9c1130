"""The non-diffusion baselines, a VAE (ELBO) and a DCGAN (alternating Adam): config, training, loading, sampling.

:func:`train_zoo` runs the recipes of :mod:`denoisekit.train.recipes.zoo` on the engine
(:mod:`denoisekit.engine.loop`): the network is initialised from ``seed``; step ``k`` reads the engine's
seeded stream of per-epoch permutations of the images, and each example's noise comes from its own generator
seeded by ``(seed, k, example)``, so one process equals N and a resumed run continues bit for bit.

With ``out`` set, ``out`` is an engine run directory (``config.yaml``, ``log.csv``, ``loss.png``,
``checkpoints/step_*/`` with the model's state dict, both optimisers as one, no EMA, and the ZooConfig and
model config in ``state.json``); :func:`load_zoo` rebuilds the model from it. Without ``out`` the run
directory is temporary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._utils import check_choice, seeded_generators
from ..engine.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from ..engine.lineage import CHECKPOINTS
from ..models.gan import DCGAN, DCGANConfig
from ..models.vae import VAE, VAEConfig

ZOO_MODELS: dict[str, type[nn.Module]] = {"vae": VAE, "dcgan": DCGAN}
#: Learning rates when ``lr`` is None: Adam's usual 1e-3 for the VAE, Radford et al.'s 2e-4 for the DCGAN.
DEFAULT_LR = {"vae": 1e-3, "dcgan": 2e-4}


@dataclass(frozen=True)
class ZooConfig:
    """A VAE or DCGAN run. ``model_options``: fields of :class:`VAEConfig` / :class:`DCGANConfig` other than
    ``image_size`` and ``channels``, which come from the data; ``data``/``data_options``: a dataset of
    ``denoisekit.data.IMAGE_DATASETS`` and its options; ``out``: run directory (None: a temporary one).
    ``batch`` is the global batch of a step, split into ``grad_accum`` micro-batches; the last ``keep_last``
    checkpoints are kept; ``max_nan_steps`` non-finite steps in a row stop the run (1: the first does);
    ``device: auto`` trains on the accelerator when there is one. A resumed run may change ``steps``,
    ``log_every``, ``save_every``, ``keep_last`` and ``max_nan_steps``."""

    model: Literal["vae", "dcgan"] = "vae"
    model_options: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch: int = 64
    lr: float | None = None
    seed: int = 0
    log_every: int = 50
    out: str | None = None
    save_every: int = 0  # 0: only at the end
    grad_accum: int = 1
    keep_last: int = 3
    max_nan_steps: int = 1
    device: Literal["auto", "cpu"] = "cpu"

    def __post_init__(self) -> None:
        check_choice("zoo model", self.model, ZOO_MODELS)
        check_choice("device", self.device, ("auto", "cpu"))
        for name in ("steps", "batch", "log_every", "grad_accum", "keep_last", "max_nan_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ZooConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise ValueError(f"ZooConfig.save_every must be an integer >= 0, got {self.save_every!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"ZooConfig.lr must be None or > 0, got {self.lr!r}")
        if self.batch % self.grad_accum:
            raise ValueError(f"ZooConfig.batch ({self.batch}) must be a multiple of grad_accum ({self.grad_accum})")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.model] if self.lr is None else self.lr


def load_images(name: str, options: dict[str, Any] | None = None) -> Tensor:
    """Every image of a built-in dataset as one tensor ``(N, C, S, S)`` in [-1, 1]."""
    from ..data import IMAGE_DATASETS

    check_choice("dataset", name, IMAGE_DATASETS)
    ds = IMAGE_DATASETS[name](**(options or {}))
    images = getattr(ds, "images", None)
    return images if isinstance(images, Tensor) else torch.stack([ds[i]["image"] for i in range(len(ds))])


def build_model(config: ZooConfig, channels: int, image_size: int) -> nn.Module:
    """A freshly initialised VAE or DCGAN for images ``(C, S, S)``, seeded by ``config.seed``."""
    cfg_class = VAEConfig if config.model == "vae" else DCGANConfig
    try:
        model_config = cfg_class(**{**config.model_options, "channels": channels, "image_size": image_size})
    except TypeError as e:
        raise ValueError(f"bad model_options for {config.model!r}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ZOO_MODELS[config.model](model_config)


def load_zoo(path: str | Path) -> nn.Module:
    """The model of a run directory (its latest checkpoint) or of one checkpoint directory, in eval mode
    (runs written before the engine, with ``step_*`` directly in the run directory, load too)."""
    path = Path(path)
    ckpt = latest_checkpoint(path / CHECKPOINTS) or latest_checkpoint(path) or path
    saved = load_checkpoint(ckpt, weights_only=True)
    cfg = ZooConfig(**saved["state"]["zoo_config"])
    model_cfg = saved["state"]["model_config"]
    model = build_model(cfg, model_cfg["channels"], model_cfg["image_size"])
    load_weights(model, saved["model"], str(ckpt))
    return model.eval()


@torch.no_grad()
def sample(model: nn.Module, n: int, *, seed: int = 0, batch_size: int = 256) -> Tensor:
    """``n`` images ``(n, C, S, S)`` in [-1, 1] from a VAE or DCGAN, in eval mode; sample ``i`` uses the
    generator seeded ``seed + i``, so it does not depend on ``batch_size``."""
    was_training = model.training
    model.eval()
    try:
        gens = seeded_generators(seed, n)
        out = [model.sample(len(gens[i:i + batch_size]), gens[i:i + batch_size]) for i in range(0, n, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).clamp(-1, 1)


def samples_per_second(model: nn.Module, n: int = 512, *, batch_size: int = 256, repeats: int = 3) -> float:
    """Sampling throughput of :func:`sample` (best of ``repeats`` timings after one warm-up batch)."""
    sample(model, min(n, batch_size), batch_size=batch_size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(model, n, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return n / best
