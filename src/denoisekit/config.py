"""Run configuration: one frozen dataclass per component, YAML presets, dotted overrides, validation.

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

Sections ``data``, ``model``, ``process`` and ``condition`` name an entry of a registry
(``denoisekit.data.IMAGE_DATASETS``, ``denoisekit.models.MODELS``, ``denoisekit.process.PROCESSES``,
``denoisekit.train.conditioning.CONDITIONS``, the last by ``kind``); their remaining keys are that entry's
own options, checked and typed by the entry's config dataclass (``config_class`` or ``Config``) or,
failing that, by its signature. Command-line overrides ``--set model.channels=64`` are converted to
the declared type of the key. Every error names the key; an unknown key lists the valid ones at its
level; an unknown choice lists the allowed values.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
import yaml
from torch import nn

from ._utils import check_choice, lookup
from .options import _hints, build_entry, coerce, option_schema, parse_value  # noqa: F401  (build_entry re-exported)
from .losses import DiffusionLoss
from .prediction import PREDICTIONS, Denoiser
from .process import PROCESSES, Process, get_process
from .samplers import SAMPLERS
from .schedules import SCHEDULES

T = TypeVar("T")


def _unknown_key(key: str, level: str, valid: Sequence[str]) -> ValueError:
    return ValueError(f"unknown key {key!r}; valid keys at {level!r}: {', '.join(sorted(valid))}")


def _registry(section: str) -> tuple[str, Mapping[str, Any]]:
    # Imported at call time: the registries are plain dicts that tests and plugins may extend.
    if section == "data":
        from .data import IMAGE_DATASETS
        return "dataset", IMAGE_DATASETS
    if section == "model":
        from .models import MODELS
        return "model", MODELS
    if section == "condition":
        from .train.conditioning import CONDITIONS
        return "condition kind", CONDITIONS
    return "process", PROCESSES


def _entry(section: str, name: str) -> Any:
    kind, registry = _registry(section)
    try:
        return lookup(kind, registry, name)
    except ValueError as e:
        raise ValueError(f"{section}.{_NAME_FIELD.get(section, 'name')}: {e}") from None


#: The field that names a section's registry entry, where it is not ``name``.
_NAME_FIELD = {"condition": "kind"}


# ---------------------------------------------------------------------------------------------
# Sections


class _Section:
    """Coerces every field to its declared type after construction, then runs ``_check``."""

    _key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        fixed = [f.name for f in dataclasses.fields(self) if f.name != "options"]  # type: ignore[arg-type]
        name_field = _NAME_FIELD.get(self._key, "name")
        for name in fixed:
            object.__setattr__(self, name, coerce(getattr(self, name), hints.get(name, Any), f"{self._key}.{name}"))
        if hasattr(self, "options"):
            if not isinstance(self.options, Mapping):
                raise ValueError(f"{self._key}: options must be a mapping, got {self.options!r}")
            entry = _entry(self._key, getattr(self, name_field))
            schema, is_open, cls = option_schema(entry)
            opts: dict[str, Any] = {}
            for k, v in self.options.items():
                if k in schema:
                    opts[k] = coerce(v, schema[k], f"{self._key}.{k}")
                elif is_open:
                    opts[k] = v
                else:
                    raise _unknown_key(f"{self._key}.{k}", self._key, [*fixed, *schema])
            if cls is not None:
                try:
                    cls(**opts)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{self._key} ({getattr(self, name_field)}): {e}") from None
            object.__setattr__(self, "options", opts)
        self._check()

    def _check(self) -> None:
        pass

    def _require(self, ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{self._key}.{name} must be {what}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DataConfig(_Section):
    """Dataset ``name`` from ``denoisekit.data.IMAGE_DATASETS`` and its ``options``; ``num_workers`` loader
    processes (exact resumption of random augmentations needs 0)."""

    _key: ClassVar[str] = "data"
    name: str = "digits"
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        self._require(self.num_workers >= 0, "num_workers", ">= 0")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Network ``name`` from ``denoisekit.models.MODELS`` and its ``options`` (e.g. ``channels``)."""

    _key: ClassVar[str] = "model"
    name: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessConfig(_Section):
    """Noising process ``name`` (with ``options``) and what the network predicts (see
    :class:`~denoisekit.prediction.Denoiser`); ``sigma_data`` is EDM's data standard deviation."""

    _key: ClassVar[str] = "process"
    name: str = "ddpm"
    prediction: Literal["eps", "x0", "v", "flow", "score", "edm"] = "eps"
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
class OptimConfig(_Section):
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
class EMAConfig(_Section):
    """EMA of the weights (see :mod:`denoisekit.train.ema`): ``warmup`` with ``decay``, EDM2's ``power``
    profile with ``sigma_rel``, or ``none``."""

    _key: ClassVar[str] = "ema"
    kind: Literal["warmup", "power", "none"] = "warmup"
    decay: float = 0.9999
    sigma_rel: float = 0.05

    def _check(self) -> None:
        self._require(0 <= self.decay < 1, "decay", "in [0, 1)")
        self._require(0 < self.sigma_rel < 0.28, "sigma_rel", "in (0, 0.28)")


@dataclass(frozen=True)
class ConditionConfig(_Section):
    """What the model is conditioned on (``kind``: none, class, text or image; see
    :mod:`denoisekit.train.conditioning`) and its ``options``. Class labels and captions are replaced by
    the null condition with probability ``dropout`` (classifier-free guidance, Ho & Salimans 2022)."""

    _key: ClassVar[str] = "condition"
    kind: str = "none"
    dropout: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        self._require(0 <= self.dropout < 1, "dropout", "in [0, 1)")


@dataclass(frozen=True)
class TrainConfig(_Section):
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

    def _check(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_last", "max_nan_steps"):
            self._require(getattr(self, name) >= 1, name, ">= 1")
        self._require(self.save_every >= 0, "save_every", ">= 0 (0: only at the end)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum "
                             f"({self.grad_accum})")


@dataclass(frozen=True)
class SampleConfig(_Section):
    """Sample grids during training and the defaults of ``denoisekit sample``: ``n`` images
    (class-conditional: one row per class; text: one row per prompt of ``prompts``, by default the
    first dataset captions) every ``every`` steps (0: at the end only; ``n: 0``: never)."""

    _key: ClassVar[str] = "sample"
    sampler: str = "dpmpp_2m"
    nfe: int = 20
    schedule: str = "karras"
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
class LatentConfig(_Section):
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


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "process": ProcessConfig,
                             "loss": DiffusionLoss, "optim": OptimConfig, "ema": EMAConfig,
                             "condition": ConditionConfig, "train": TrainConfig, "sample": SampleConfig,
                             "latent": LatentConfig}


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

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name}: expected a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        kind, m = self.condition.kind, self.model.options
        if kind == "class" and self.num_classes is None:
            raise ValueError("condition.kind is 'class' but model.num_classes is not set (labels 0..N-1; "
                             "N is the null label of classifier-free guidance)")
        if kind == "text":
            text = self.condition_options()
            want = text.context_dim
            if m.get("context_dim") != want:
                raise ValueError(f"condition.kind is 'text' with encoder {text.encoder!r}: "
                                 f"model.context_dim must be {want} (the encoder's width), got {m.get('context_dim')}")
        elif m.get("context_dim") is not None:
            raise ValueError(f"model.context_dim={m['context_dim']} (cross-attention) needs condition.kind: text")
        if self.sample.cfg_scale != 1 and kind not in ("class", "text"):
            raise ValueError(f"sample.cfg_scale={self.sample.cfg_scale} needs condition.kind class or text")
        if self.sample.prompts and kind != "text":
            raise ValueError("sample.prompts needs condition.kind: text")
        if self.latent.autoencoder is not None and kind == "image":
            raise ValueError("latent.autoencoder does not support condition.kind: image (its degraded inputs are "
                             "images, not latents); use pixel space (latent.autoencoder: null)")

    def condition_options(self) -> Any:
        """The condition's own options as its config dataclass."""
        from .train.conditioning import CONDITIONS

        return CONDITIONS[self.condition.kind].Config(**self.condition.options)

    @property
    def num_classes(self) -> int | None:
        n = self.model.options.get("num_classes")
        return n if isinstance(n, int) else None


# ---------------------------------------------------------------------------------------------
# Dictionaries, YAML and overrides


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (the YAML layout: options flattened into their section)."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        section = getattr(config, name)
        body = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section) if f.name != "options"}
        body.update(_plain(getattr(section, "options", {})))
        out[name] = body
    return out


def _section_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name != "options"]


def _section_from_dict(name: str, cls: type, body: Mapping[str, Any]) -> Any:
    if not isinstance(body, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {body!r}")
    fixed = _section_fields(cls)
    hints = _hints(cls)
    if any(f.name == "options" for f in dataclasses.fields(cls)):
        kwargs = {k: v for k, v in body.items() if k in fixed}
        kwargs["options"] = {k: v for k, v in body.items() if k not in fixed}
    else:
        unknown = [k for k in body if k not in fixed]
        if unknown:
            raise _unknown_key(f"{name}.{unknown[0]}", name, fixed)
        kwargs = {k: coerce(v, hints.get(k, Any), f"{name}.{k}") for k, v in body.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(name) else f"{name}: {msg}") from None


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
    d = _migrate(d)
    for key in d:
        if key not in SECTIONS:
            raise _unknown_key(str(key), "<top level>", list(SECTIONS))
    return Config(**{name: _section_from_dict(name, cls, d.get(name) or {}) for name, cls in SECTIONS.items()})


def key_type(d: Mapping[str, Any], section: str, key: str) -> Any:
    """The declared type of ``section.key`` in raw config ``d`` (options follow ``d[section]['name']``)."""
    if section not in SECTIONS:
        raise _unknown_key(section, "<top level>", list(SECTIONS))
    cls = SECTIONS[section]
    fixed = _section_fields(cls)
    if key in fixed:
        return _hints(cls).get(key, Any)
    if any(f.name == "options" for f in dataclasses.fields(cls)):
        body = d.get(section) or {}
        name_field = _NAME_FIELD.get(section, "name")
        name = body.get(name_field, next(f.default for f in dataclasses.fields(cls) if f.name == name_field))
        schema, is_open, _ = option_schema(_entry(section, name))
        if key in schema:
            return schema[key]
        if is_open:
            return Any
        raise _unknown_key(f"{section}.{key}", section, [*fixed, *schema])
    raise _unknown_key(f"{section}.{key}", section, fixed)


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str], *, sections: Mapping[str, type] = SECTIONS,
                    typed: Callable[[Mapping[str, Any], str, str], Any] | None = None) -> dict[str, Any]:
    """A copy of raw config ``d`` with ``"section.key=value"`` overrides applied, values typed per key.

    ``sections`` and ``typed(raw, section, key) -> type`` (default :func:`key_type`) let other run configs
    (classifier, autoencoder) share the parsing; ``typed`` raises for an unknown key."""
    typed = typed or key_type
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a mapping of sections ({', '.join(sections)}), got {type(d).__name__}")
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected KEY=VALUE (SECTION.KEY=VALUE, e.g. model.channels=64)")
        parts = key.split(".")
        if len(parts) != 2:
            if parts[0] not in sections:
                raise _unknown_key(parts[0], "<top level>", list(sections))
            raise ValueError(f"override {key!r}: expected SECTION.KEY (e.g. model.channels=64); give a list or "
                             f"mapping value whole, e.g. model.channel_mult=[1,2,2]")
        section, name = parts
        if section not in sections:
            raise _unknown_key(section, "<top level>", list(sections))
        value = parse_value(text.strip(), typed(out, section, name), key)
        body = out.get(section)
        out[section] = {**(body if isinstance(body, Mapping) else {}), name: value}
    return out


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists (``channel_mult: [1, 2, 2]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_to_yaml(config: Config) -> str:
    return yaml.dump(config_to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def read_config_file(path: str | os.PathLike[str], overrides: Sequence[str],
                     build: Callable[[Mapping[str, Any], Sequence[str]], T]) -> T:
    """``build(raw YAML mapping, overrides)`` for a config file; every error names the file (and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    try:
        return build(raw if raw is not None else {}, overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply dotted ``overrides``, validate. Errors name the file and the key."""
    return read_config_file(path, overrides, lambda raw, ov: config_from_dict(apply_overrides(raw, ov)))


def save_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    from .train.checkpoint import write_text_atomic

    write_text_atomic(path, config_to_yaml(config))


# ---------------------------------------------------------------------------------------------
# Builders


def build_dataset(config: Config) -> Any:
    """The training dataset (items are dicts with ``image`` and optionally ``label``, ``caption``)."""
    return build_entry(_entry("data", config.data.name), config.data.options)


def build_model(config: Config) -> nn.Module:
    """A freshly initialised network, seeded by ``train.seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        net = build_entry(_entry("model", config.model.name), config.model.options)
        if config.condition.kind == "text":  # the network encodes its prompts (a learned encoder trains with it)
            from .models.text import TextConditioned

            opts = config.condition_options()
            net = TextConditioned(net, opts.encoder, **opts.encoder_options())
        return net


def build_process(config: Config) -> Process:
    return get_process(config.process.name, **config.process.options)


def build_denoiser(config: Config, net: Any = None) -> Denoiser:
    """``net`` (default: :func:`build_model`) wrapped as the run's :class:`Denoiser`."""
    p = config.process
    return Denoiser(build_model(config) if net is None else net, build_process(config), p.prediction,  # type: ignore[arg-type]
                    time_input=p.time_input, sigma_data=p.sigma_data)
