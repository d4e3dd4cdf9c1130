"""The diffusion run's configuration: one frozen dataclass per component, YAML presets, dotted overrides, validation.

A config file (see ``configs/*.yaml``) has one mapping per section::

    data:    {name: digits, size: 16}                  # DataConfig; other keys go to the dataset
    model:   {name: unet, in_channels: 1, channels: 64} # ModelConfig; other keys go to the network
    process: {name: ddpm, prediction: eps}             # ProcessConfig; other keys go to the process
    loss:    {weighting: min_snr}                      # denoisekit.losses.DiffusionLoss
    optim:   {lr: 2.0e-4, warmup_steps: 200}           # OptimConfig
    ema:     {kind: power, sigma_rel: 0.05}            # EMAConfig
    condition: {kind: class, dropout: 0.1}             # ConditionConfig; other keys go to the condition
    train:   {steps: 5000, batch_size: 128}            # TrainConfig
    sample:  {sampler: dpmpp_2m, nfe: 20}              # SampleConfig
    latent:  {autoencoder: runs/shapes-ae-f4}          # LatentConfig (absent: pixel space)
    init:    {from_run: runs/digits}                   # InitConfig: start from a run's weights
    teacher: {run: runs/teacher}                       # TeacherConfig: a frozen model for a recipe's targets
    fewstep: {levels: 18, solver: heun}                # FewStepConfig: the consistency recipes
    lora:    {rank: 4, alpha: 4}                       # LoraSection: the adapter of the lora recipe
    lcm:     {skip: 20, cfg_min: 1.5, cfg_max: 3}      # LcmSection: the lcm_lora recipe's guided teacher step
    controlnet: {kind: controlnet, signal: edges}      # ControlNetSection: the controlnet recipe's module
    textual_inversion: {tokens: [<my-star>]}           # TextualInversionSection: its recipe's new tokens
    dreambooth: {class_prompt: a large orange star}    # DreamBoothSection: the dreambooth recipe

Sections ``data``, ``model``, ``process`` and ``condition`` name an entry of a registry
(``denoisekit.data.IMAGE_DATASETS``, ``denoisekit.models.MODELS``, ``denoisekit.process.PROCESSES``,
``denoisekit.conditioning.CONDITIONS``, the last by ``kind``); their remaining keys are that entry's
own options, checked and typed by the entry's config dataclass (``config_class`` or ``Config``) or,
failing that, by its signature. Command-line overrides ``--set model.channels=64`` are converted to
the declared type of the key. Every error names the key; an unknown key lists the valid ones at its
level; an unknown choice lists the allowed values.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from .._utils import check_choice
from ..conditioning import CONDITIONS, check_run, condition_kind
from ..io import write_text_atomic
from ..losses import DiffusionLoss
from ..options import (Section, apply_overrides as apply_section_overrides, check_not_file, check_sections,
                       key_type as section_key_type,
                       read_config_file, section_to_dict, sections_from_dict, to_yaml)
from ..prediction import PREDICTIONS
from ..process import get_process
from ..samplers import SAMPLERS
from ..samplers.run import DEFAULT_SCHEDULE
from ..schedules import SCHEDULES
from .fewstep_config import FewStepConfig
from .lora_config import LoraSection
from .lcm_config import LcmSection
from .controlnet_config import ControlNetSection
from .inversion_config import TextualInversionSection
from .dreambooth_config import DreamBoothSection


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class DataConfig(Section):
    """Dataset ``name`` from ``denoisekit.data.IMAGE_DATASETS`` and its ``options``; ``num_workers`` loader
    processes (exact resumption of random augmentations needs 0); ``only_labels``: keep only the items of these
    classes (empty: all), e.g. to fine-tune a run on part of its data."""

    _key: ClassVar[str] = "data"

    @classmethod
    def registry(cls) -> tuple[str, Mapping[str, Any]]:
        from ..data import IMAGE_DATASETS  # at call time: a plain dict that tests and plugins may extend

        return "dataset", IMAGE_DATASETS

    name: str = "digits"
    num_workers: int = 0
    only_labels: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        self._require(self.num_workers >= 0, "num_workers", ">= 0")
        self._require(all(v >= 0 for v in self.only_labels), "only_labels", "class labels >= 0")


@dataclass(frozen=True)
class ModelConfig(Section):
    """Network ``name`` from ``denoisekit.models.MODELS`` and its ``options`` (e.g. ``channels``)."""

    _key: ClassVar[str] = "model"

    @classmethod
    def registry(cls) -> tuple[str, Mapping[str, Any]]:
        from ..models import MODELS

        return "model", MODELS

    name: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessConfig(Section):
    """Noising process ``name`` (with ``options``) and what the network predicts (see
    :class:`~denoisekit.prediction.Denoiser`); ``sigma_data`` is EDM's data standard deviation."""

    _key: ClassVar[str] = "process"

    @classmethod
    def registry(cls) -> tuple[str, Mapping[str, Any]]:
        from ..process import PROCESSES

        return "process", PROCESSES

    name: str = "ddpm"
    prediction: Literal["eps", "x0", "v", "flow", "score", "edm", "consistency"] = "eps"
    time_input: Literal["model", "t", "log_sigma"] = "model"
    sigma_data: float = 0.5
    options: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        check_choice("prediction", self.prediction, PREDICTIONS)
        self._require(self.sigma_data > 0, "sigma_data", "> 0")
        try:
            get_process(self.name, **self.options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"process ({self.name}): {e}") from None


@dataclass(frozen=True)
class OptimConfig(Section):
    """AdamW (Loshchilov & Hutter 2019) with linear warm-up over ``warmup_steps`` then a constant or
    cosine (Loshchilov & Hutter 2017) learning rate decaying to ``lr * min_lr_ratio``; gradients are
    clipped to global norm ``grad_clip`` (0: no clipping)."""

    _key: ClassVar[str] = "optim"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0

    def _check(self) -> None:
        self._require(self.lr > 0, "lr", "> 0")
        self._require(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        self._require(self.eps > 0, "eps", "> 0")
        self._require(self.weight_decay >= 0, "weight_decay", ">= 0")
        self._require(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        self._require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        self._require(self.grad_clip >= 0, "grad_clip", ">= 0 (0: no clipping)")


@dataclass(frozen=True)
class EMAConfig(Section):
    """EMA of the weights (see :mod:`denoisekit.engine.ema`): ``warmup`` with ``decay``, EDM2's ``power``
    profile with ``sigma_rel``, or ``none``."""

    _key: ClassVar[str] = "ema"
    kind: Literal["warmup", "power", "none"] = "warmup"
    decay: float = 0.9999
    sigma_rel: float = 0.05

    def _check(self) -> None:
        self._require(0 <= self.decay < 1, "decay", "in [0, 1)")
        self._require(0 < self.sigma_rel < 0.28, "sigma_rel", "in (0, 0.28)")


@dataclass(frozen=True)
class ConditionConfig(Section):
    """What the model is conditioned on (``kind``: none, class, text, image or embedding, or a list of kinds
    such as ``[class, image]``; see :mod:`denoisekit.conditioning`) and its ``options`` (a list's kinds'
    options side by side). Class labels, captions and embeddings are replaced by the null condition with
    probability ``dropout`` (classifier-free guidance, Ho & Salimans 2022)."""

    _key: ClassVar[str] = "condition"
    name_field: ClassVar[str] = "kind"

    @classmethod
    def registry(cls) -> tuple[str, Mapping[str, Any]]:
        return "condition kind", CONDITIONS

    @classmethod
    def entry(cls, name: str | Sequence[str]) -> Any:
        try:
            return condition_kind(name)
        except ValueError as e:
            raise ValueError(f"condition.kind: {e}") from None

    kind: str | tuple[str, ...] = "none"
    dropout: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        self._require(0 <= self.dropout < 1, "dropout", "in [0, 1)")


@dataclass(frozen=True)
class TrainConfig(Section):
    """The loop. ``batch_size`` is the global batch of one optimiser step, split over ``grad_accum``
    micro-batches and over processes, so a run's maths does not depend on how many processes run it.
    ``save_every``/``log_every`` in
    steps (``save_every: 0`` saves at the end only); the last ``keep_last`` checkpoints are kept.
    ``max_nan_steps`` consecutive non-finite losses stop the run. ``device: cpu`` forces the CPU."""

    _key: ClassVar[str] = "train"
    steps: int = 10_000
    batch_size: int = 64
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16"] = "no"
    seed: int = 0
    log_every: int = 50
    save_every: int = 1000
    keep_last: int = 3
    max_nan_steps: int = 5
    device: Literal["auto", "cpu"] = "auto"
    recipe: str = "diffusion"

    def _check(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_last", "max_nan_steps"):
            self._require(getattr(self, name) >= 1, name, ">= 1")
        self._require(self.save_every >= 0, "save_every", ">= 0 (0: only at the end)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum "
                             f"({self.grad_accum})")


@dataclass(frozen=True)
class SampleConfig(Section):
    """Sample grids during training and the defaults of ``denoisekit sample``: ``n`` images
    (class-conditional: one row per class; text: one row per prompt of ``prompts``, by default the
    first dataset captions) every ``every`` steps (0: at the end only; ``n: 0``: never)."""

    _key: ClassVar[str] = "sample"
    sampler: str = "dpmpp_2m"
    nfe: int = 20
    schedule: str = DEFAULT_SCHEDULE
    cfg_scale: float = 1.0
    n: int = 64
    every: int = 0
    seed: int = 0
    prompts: tuple[str, ...] = ()

    def _check(self) -> None:
        for name, allowed in (("sampler", SAMPLERS), ("schedule", SCHEDULES)):
            try:
                check_choice(name, getattr(self, name), allowed)
            except ValueError as e:
                raise ValueError(f"sample.{name}: {e}") from None
        self._require(self.nfe >= 1, "nfe", ">= 1")
        self._require(self.cfg_scale >= 0, "cfg_scale", ">= 0")
        self._require(self.n >= 0, "n", ">= 0")
        self._require(self.every >= 0, "every", ">= 0")


@dataclass(frozen=True)
class LatentConfig(Section):
    """Latent diffusion (Rombach et al. 2022): train on the scaled latents of the autoencoder in directory
    ``autoencoder`` (from ``denoisekit train-autoencoder``; ``None``: pixel space), encoded once per image
    with the posterior mode, or with ``sample_posterior`` a fresh posterior sample per epoch; ``cache``
    keeps the encoded latents on disk for the next run (see :mod:`denoisekit.train.latent`)."""

    _key: ClassVar[str] = "latent"
    autoencoder: str | None = None
    sample_posterior: bool = False
    cache: bool = True

    def _check(self) -> None:
        self._require(self.autoencoder is None or bool(self.autoencoder.strip()), "autoencoder",
                      "a directory written by 'denoisekit train-autoencoder' (or null for pixel space)")
        check_not_file(self.autoencoder, "latent.autoencoder")


@dataclass(frozen=True)
class InitConfig(Section):
    """Start the network from another run's weights: ``from_run`` (a run directory; ``None``: a fresh
    initialisation) and which of its latest weights, ``ema`` or raw ``model``. The run records the hash
    of what it started from and refuses to resume when that run changed (:mod:`denoisekit.engine.lineage`).
    ``trainable``: glob patterns over parameter names (``out.*``, ``*attn*``); when given, only those train and
    the run stores only them, a delta that :func:`~denoisekit.train.run.load_run` composes with the base."""

    _key: ClassVar[str] = "init"
    from_run: str | None = None
    weights: Literal["ema", "model"] = "ema"
    trainable: tuple[str, ...] = ()

    def _check(self) -> None:
        self._require(self.from_run is None or bool(self.from_run.strip()), "from_run",
                      "a training run directory (or null)")
        check_not_file(self.from_run, "init.from_run")
        self._require(not self.trainable or self.from_run is not None, "trainable",
                      "empty unless init.from_run is set (a delta is over a base run)")


@dataclass(frozen=True)
class TeacherConfig(Section):
    """A frozen model a recipe computes its targets with (distillation): ``run`` (a run directory; ``None``:
    no teacher) and which of its weights; hashed and checked like ``init.from_run``."""

    _key: ClassVar[str] = "teacher"
    run: str | None = None
    weights: Literal["ema", "model"] = "ema"

    def _check(self) -> None:
        self._require(self.run is None or bool(self.run.strip()), "run", "a training run directory (or null)")
        check_not_file(self.run, "teacher.run")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "process": ProcessConfig,
                             "loss": DiffusionLoss, "optim": OptimConfig, "ema": EMAConfig,
                             "condition": ConditionConfig, "train": TrainConfig, "sample": SampleConfig,
                             "latent": LatentConfig, "init": InitConfig, "teacher": TeacherConfig,
                             "fewstep": FewStepConfig, "lora": LoraSection, "lcm": LcmSection,
                             "textual_inversion": TextualInversionSection, "controlnet": ControlNetSection,
                             "dreambooth": DreamBoothSection}


@dataclass(frozen=True)
class Config:
    """A whole run: one section per component (see the module docstring)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    loss: DiffusionLoss = field(default_factory=DiffusionLoss)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    init: InitConfig = field(default_factory=InitConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    fewstep: FewStepConfig = field(default_factory=FewStepConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    lcm: LcmSection = field(default_factory=LcmSection)
    textual_inversion: TextualInversionSection = field(default_factory=TextualInversionSection)
    dreambooth: DreamBoothSection = field(default_factory=DreamBoothSection)
    controlnet: ControlNetSection = field(default_factory=ControlNetSection)

    def __post_init__(self) -> None:
        check_sections(self, SECTIONS)
        check_run(self)  # the condition kinds' checks of the run (num_classes, context_dim, cfg_scale, ...)

    def condition_options(self) -> Any:
        """The condition's own options as its config dataclass."""
        return condition_kind(self.condition.kind).Config(**self.condition.options)

    @property
    def num_classes(self) -> int | None:
        n = self.model.options.get("num_classes")
        return n if isinstance(n, int) else None


# ---------------------------------------------------------------------------------------------
# What the data decide, and traps in a config


def data_defaults(config: Config) -> tuple[Config, list[str]]:
    """``config`` with what a folder's images decide when the config does not (``data.size``: the most common
    image size, its shorter side), and lines saying so, or saying that the images are resized to a
    ``data.size`` that differs from theirs."""
    from ..data.folder import image_sizes

    opts, notes = config.data.options, []
    root = opts.get("root")
    if config.data.name != "folder" or not isinstance(root, str) or not os.path.isdir(root):
        return config, notes  # other datasets have their own sizes; a missing folder is the dataset's error
    sizes, n = image_sizes(root)
    if not sizes:
        return config, notes
    (w, h), count = sizes.most_common(1)[0]
    seen = f"{count} of {sum(sizes.values())} images" + ("" if len(sizes) == 1 else f"; {len(sizes)} sizes in all")
    crop = "" if w == h else ", centre-cropped"
    if "size" not in opts:
        config = replace(config, data=replace(config.data, options={**opts, "size": min(w, h)}))
        notes.append(f"data.size: {min(w, h)} (not set: the folder's most common image size, {w}x{h}, {seen}{crop})")
    elif opts["size"] is not None and opts["size"] != min(w, h):
        s = opts["size"]
        how = "resized" if w == h else "resized and centre-cropped"
        notes.append(f"{w}x{h} images are {how} to {s}x{s} (data.size); the folder's most common size: {seen}")
    return config, notes


def warmup_warning(warmup_steps: int, steps: int) -> str | None:
    """Why a learning-rate warm-up of ``warmup_steps`` does not fit a run of ``steps`` (None when it does):
    the linear warm-up of :func:`~denoisekit.engine.optim.lr_factor` then never reaches ``optim.lr``."""
    if warmup_steps < steps or steps < 1:
        return None
    where = ("reaches optim.lr only at the last step" if warmup_steps == steps else
             f"never reaches optim.lr (it ends at {steps / warmup_steps:.0%} of it)")
    return (f"optim.warmup_steps ({warmup_steps}) >= train.steps ({steps}): the learning rate {where}; "
            f"set optim.warmup_steps to a fraction of the run (e.g. {max(1, steps // 10)})")


# ---------------------------------------------------------------------------------------------
# Dictionaries, YAML and overrides


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (the YAML layout: options flattened into their section)."""
    return {name: section_to_dict(getattr(config, name)) for name in SECTIONS}


def _migrate(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """Configs written before the ``condition`` section had ``train.conditioning`` and ``train.label_dropout``."""
    train = d.get("train")
    if not isinstance(train, Mapping) or not {"conditioning", "label_dropout"} & set(train) or "condition" in d:
        return d
    warnings.warn("train.conditioning / train.label_dropout are now condition.kind / condition.dropout; "
                  "read the old keys as those", DeprecationWarning, stacklevel=3)
    train = dict(train)
    condition = {"kind": train.pop("conditioning", "none")}
    if "label_dropout" in train:
        condition["dropout"] = train.pop("label_dropout")
    return {**d, "train": train, "condition": condition}


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from the YAML layout; missing sections take defaults."""
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a mapping of sections ({', '.join(SECTIONS)}), got {type(d).__name__}")
    return Config(**sections_from_dict(_migrate(d), SECTIONS))


def key_type(d: Mapping[str, Any], section: str, key: str) -> Any:
    """The declared type of ``section.key`` in raw run config ``d`` (options follow ``d[section]['name']``)."""
    return section_key_type(d, section, key, SECTIONS)


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of raw run config ``d`` with ``"section.key=value"`` overrides applied, values typed per key."""
    return apply_section_overrides(d, overrides, SECTIONS)


def config_to_yaml(config: Config) -> str:
    return to_yaml(config_to_dict(config))


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply dotted ``overrides``, validate. Errors name the file and the key."""
    return read_config_file(path, overrides, lambda raw, ov: config_from_dict(apply_overrides(raw, ov)))


def save_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text_atomic(path, config_to_yaml(config))
