"""Configuration of an autoencoder run (:mod:`denoisekit.train.autoencoder`): sections, YAML, overrides,
and which images it trains and is evaluated on.

A YAML file has one mapping per section of :class:`AutoencoderTrainConfig`::

    data:          {name: shapes, size: 32}            # denoisekit.train.config.DataConfig
    model:         {factor: 4, channels: 64}           # denoisekit.models.autoencoder.AutoencoderConfig
    discriminator: {layers: 2}                         # denoisekit.models.discriminator.DiscriminatorConfig
    loss:          {reconstruction: l1, disc_start: 2000}
    optim:         {lr: 2.0e-4}                        # denoisekit.train.config.OptimConfig + disc_lr
    train:         {steps: 10000, batch_size: 32}      # denoisekit.train.config.TrainConfig
    eval:          {held_out: 1000}

Overrides ``--set section.key=value`` are typed per key, as for diffusion runs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch.utils.data import Subset

from .._utils import check_choice
from ..models.autoencoder import AutoencoderConfig
from ..models.discriminator import DiscriminatorConfig
from ..options import (apply_overrides, build_entry, check_sections, option_schema, read_config_file, section_to_dict,
                       sections_from_dict)
from .config import DataConfig, OptimConfig, TrainConfig


@dataclass(frozen=True)
class AutoencoderLossConfig:
    """``reconstruction`` L1 or L2 (per-image sums), ``kl_weight``, the GAN's ``disc_weight`` (0: no GAN)
    from step ``disc_start``, and the clamp of the adaptive weight (LDM's 1e4; with per-image sums lambda
    grows with the pixel count: it is ~1e4 for 32x32 RGB shapes, so larger images may need a larger clamp)."""

    reconstruction: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-6
    disc_weight: float = 0.5
    disc_start: int = 2000
    max_adaptive_weight: float = 1e4

    def __post_init__(self) -> None:
        check_choice("loss.reconstruction", self.reconstruction, ("l1", "l2"))
        for name in ("kl_weight", "disc_weight", "disc_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.max_adaptive_weight > 0:
            raise ValueError(f"loss.max_adaptive_weight must be > 0, got {self.max_adaptive_weight!r}")


@dataclass(frozen=True)
class AutoencoderOptimConfig(OptimConfig):
    """:class:`~denoisekit.train.config.OptimConfig` for one AdamW over two parameter groups: the autoencoder at
    ``lr``, the discriminator at ``disc_lr`` (None: ``lr``), both on the same warm-up/decay schedule.
    Defaults as LDM: ``betas = (0.5, 0.9)``; ``grad_clip`` (autoencoder only) off, as the per-image-sum
    losses have gradient norms in the thousands."""

    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 0.0
    disc_lr: float | None = None

    def _check(self) -> None:
        super()._check()
        self._require(self.disc_lr is None or self.disc_lr > 0, "disc_lr", "> 0 or null (the same as lr)")


@dataclass(frozen=True)
class AutoencoderEvalConfig:
    """After training: ``scale_images`` training images set the latent scale (``center_latents`` also
    the shift); ``held_out`` images give PSNR and rFID. ``features``: ``auto`` (Inception if ``inception``
    is a weights file, else the dataset's built-in network), ``inception``, or ``none`` (PSNR only)."""

    held_out: int = 1000
    scale_images: int = 1000
    center_latents: bool = False
    features: Literal["auto", "inception", "none"] = "auto"
    inception: str | None = None
    cache_dir: str | None = None
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_choice("eval.features", self.features, ("auto", "inception", "none"))
        if self.held_out < 0 or self.scale_images < 1 or self.batch_size < 1:
            raise ValueError("eval.held_out must be >= 0, eval.scale_images and eval.batch_size >= 1")
        if self.features == "inception" and not self.inception:
            raise ValueError("eval.features 'inception' needs eval.inception: a local FID Inception weights file")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": AutoencoderConfig, "discriminator": DiscriminatorConfig,
                             "loss": AutoencoderLossConfig, "optim": AutoencoderOptimConfig,
                             "train": TrainConfig, "eval": AutoencoderEvalConfig}


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """A whole autoencoder run, one section per component (YAML: ``configs/autoencoder/shapes-f4.yaml``).
    ``data`` and ``train`` are the diffusion runs' sections (:mod:`denoisekit.train.config`), without gradient
    accumulation or mixed precision. The discriminator takes the model's ``in_channels``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optim: AutoencoderOptimConfig = field(default_factory=AutoencoderOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: AutoencoderEvalConfig = field(default_factory=AutoencoderEvalConfig)

    def __post_init__(self) -> None:
        check_sections(self, SECTIONS)
        if self.train.grad_accum != 1 or self.train.mixed_precision != "no":
            raise ValueError("train.grad_accum and train.mixed_precision are not supported for autoencoders "
                             "(leave them at 1 and 'no')")
        if self.discriminator.in_channels != self.model.in_channels:
            object.__setattr__(self, "discriminator", replace(self.discriminator, in_channels=self.model.in_channels))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], overrides: Sequence[str] = ()) -> AutoencoderTrainConfig:
        """Build from the YAML layout, after ``"section.key=value"`` overrides typed per key."""
        return cls(**sections_from_dict(apply_overrides(d, overrides, SECTIONS), SECTIONS))

    def to_dict(self) -> dict[str, Any]:
        return {name: section_to_dict(getattr(self, name)) for name in SECTIONS}


def load_autoencoder_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> AutoencoderTrainConfig:
    """Read a YAML run config (errors name the file and the key)."""
    return read_config_file(path, overrides, AutoencoderTrainConfig.from_dict)


# ------------------------------------------------------------------------------------------------ data

def split_datasets(data: DataConfig, held_out: int) -> tuple[Any, int, Any]:
    """``(train, n_train, held_out)``: training uses items ``0..n_train-1`` of ``train``; ``held_out`` is a
    dataset (``None`` when ``held_out`` is 0) chosen per the rule of the module docstring."""
    from ..data import IMAGE_DATASETS

    entry = IMAGE_DATASETS[data.name]
    schema, _, cls = option_schema(entry)
    opts = dict(data.options)
    train = build_entry(entry, opts)
    if held_out == 0:
        return train, len(train), None
    if "split" in schema:
        default = next((f.default for f in dataclasses.fields(cls) if f.name == "split"), None) if cls else None
        if opts.get("split", default) != "train":
            raise ValueError(f"data.split is {opts.get('split', default)!r}: train on split 'train' so that the "
                             "'test' split is held out for evaluation")
        test = build_entry(entry, {**opts, "split": "test"})
        return train, len(train), Subset(test, range(min(held_out, len(test))))
    if "length" in schema and "seed" in schema:  # procedural: item i is a function of (seed, i)
        n = len(train)
        return train, n, Subset(build_entry(entry, {**opts, "length": n + held_out}), range(n, n + held_out))
    if len(train) <= held_out:
        raise ValueError(f"dataset {data.name!r} has {len(train)} images: too few to hold out eval.held_out="
                         f"{held_out} of them")
    n = len(train) - held_out
    return train, n, Subset(train, range(n, len(train)))
