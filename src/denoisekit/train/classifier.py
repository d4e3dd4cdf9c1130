"""Training a noisy-image classifier for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

The classifier learns ``p(c | x_t, t)`` on images noised by a process exactly as the diffusion model is
trained: times drawn by :func:`~denoisekit.losses.sample_times` (``uniform``, ``lognormal``,
``logit_normal``), ``x_t = alpha x0 + sigma eps``, cross-entropy on the labels, AdamW with warm-up and
a cosine learning rate (:func:`~denoisekit.train.trainer.lr_factor`). Every draw comes from one seeded
generator, so a run is deterministic on a CPU. A held-out fraction of the data measures accuracy at a
list of VE-frame noise levels. A config file (``configs/classifier/digits.yaml``)::

    data:    {name: digits, size: 8, split: all}          # any labelled image dataset
    model:   {in_channels: 1, num_classes: 10, channels: 32, channel_mult: [1, 2]}
    process: {name: edm, time_input: log_sigma}          # the process (and time input) to guide
    optim:   {lr: 2.0e-3, weight_decay: 0.01, schedule: cosine}
    train:   {steps: 1500, batch_size: 128, noise_levels: lognormal}

A saved classifier is a directory with ``model.safetensors`` and ``classifier.json`` (format, the
resolved config, accuracy by noise level), both written atomically; :func:`load_classifier` returns the
VE-frame :class:`~denoisekit.models.classifier.NoisyClassifier` that
:class:`~denoisekit.guidance.ClassifierGuidance` takes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from .._utils import check_choice, lookup
from ..config import (DataConfig, OptimConfig, ProcessConfig, _section_from_dict, apply_overrides, key_type,
                      read_config_file)
from ..losses import NOISE_LEVELS, NoiseLevels, sample_times
from ..models.classifier import NoiseClassifier, NoiseClassifierConfig, NoisyClassifier
from ..options import _hints, build_entry
from ..process import get_process
from .checkpoint import (load_json_format, load_tensors, load_weights, save_tensors, write_atomic,
                         write_text_atomic)
from .trainer import lr_factor

FORMAT = "denoisekit.noise_classifier/1"
WEIGHTS_FILE, META_FILE, CONFIG_FILE = "model.safetensors", "classifier.json", "config.yaml"


@dataclass(frozen=True)
class ClassifierTraining:
    """The loop: ``steps`` AdamW steps on random batches of ``batch_size``; noise levels drawn by
    ``noise_levels`` (with ``p_mean``, ``p_std``; see :mod:`denoisekit.losses`); ``test_fraction`` of the
    data held out (by ``seed``) to measure accuracy at the VE-frame noise levels ``eval_sigmas``."""

    steps: int = 1500
    batch_size: int = 128
    seed: int = 0
    noise_levels: NoiseLevels = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    label_smoothing: float = 0.0
    test_fraction: float = 0.15
    eval_sigmas: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)
    log_every: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.eval_sigmas, list):
            object.__setattr__(self, "eval_sigmas", tuple(float(s) for s in self.eval_sigmas))
        check_choice("noise level distribution", self.noise_levels, NOISE_LEVELS)
        for name in ("steps", "batch_size", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.p_std <= 0:
            raise ValueError(f"train.p_std must be > 0, got {self.p_std}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"train.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.eval_sigmas or not all(s > 0 and math.isfinite(s) for s in self.eval_sigmas):
            raise ValueError(f"train.eval_sigmas must be finite noise levels > 0, got {self.eval_sigmas!r}")


@dataclass(frozen=True)
class ClassifierRunConfig:
    """A classifier run: dataset, network, process (``prediction`` is unused: the network predicts
    logits), optimiser and loop, one frozen dataclass per section as in :mod:`denoisekit.config`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: NoiseClassifierConfig = field(default_factory=NoiseClassifierConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=0.01, schedule="cosine"))
    train: ClassifierTraining = field(default_factory=ClassifierTraining)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": NoiseClassifierConfig, "process": ProcessConfig,
                             "optim": OptimConfig, "train": ClassifierTraining}


def _section_dict(section: Any) -> dict[str, Any]:
    body = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name != "options"}
    body.update(getattr(section, "options", {}))
    return json.loads(json.dumps(body))  # tuples -> lists: plain YAML/JSON values


def classifier_config_to_dict(config: ClassifierRunConfig) -> dict[str, Any]:
    """The YAML layout: one mapping per section, a section's options flattened into it."""
    return {name: _section_dict(getattr(config, name)) for name in SECTIONS}


def classifier_config_from_dict(d: Mapping[str, Any], overrides: Sequence[str] = ()) -> ClassifierRunConfig:
    """Build and validate a :class:`ClassifierRunConfig` from the YAML layout and ``"section.key=value"``
    overrides (typed per key); errors name the key and list the valid ones."""
    raw = apply_overrides(d, overrides, sections=SECTIONS, typed=_key_type)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; valid keys at '<top level>': {', '.join(SECTIONS)}")
    # the classifier's optimiser defaults differ from a diffusion run's: keys not given take them
    raw["optim"] = {**_section_dict(ClassifierRunConfig().optim), **(raw.get("optim") or {})}
    return ClassifierRunConfig(**{name: _section_from_dict(name, cls, raw.get(name) or {})
                                  for name, cls in SECTIONS.items()})


def _key_type(raw: Mapping[str, Any], section: str, name: str) -> Any:
    if section in ("data", "process", "optim"):  # the run config's own sections: their options are typed there
        return key_type(raw, section, name)
    fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in fields:
        raise ValueError(f"unknown key '{section}.{name}'; valid keys at {section!r}: {', '.join(sorted(fields))}")
    return _hints(SECTIONS[section]).get(name, Any)


def load_classifier_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ClassifierRunConfig:
    """Read a YAML classifier config, apply dotted ``overrides``, validate; errors name the file."""
    return read_config_file(path, overrides, classifier_config_from_dict)


# ---------------------------------------------------------------------------------------------
# Training


def labelled_images(config: ClassifierRunConfig) -> tuple[Tensor, Tensor]:
    """All images ``(N, C, H, W)`` float32 and labels ``(N,)`` of the config's dataset, checked against
    the model's ``in_channels``, ``num_classes`` and stride."""
    from ..data import IMAGE_DATASETS

    ds = build_entry(lookup("dataset", IMAGE_DATASETS, config.data.name), config.data.options)
    if isinstance(getattr(ds, "images", None), Tensor) and isinstance(getattr(ds, "labels", None), Tensor):
        images, labels = ds.images, ds.labels
    else:
        items = [ds[i] for i in range(len(ds))]
        if any(it.get("label") is None for it in items):
            raise ValueError(f"dataset {config.data.name!r}: the classifier needs a 'label' in every item")
        images = torch.stack([torch.as_tensor(it["image"]) for it in items])
        labels = torch.tensor([int(it["label"]) for it in items])
    images, labels, m = images.float(), labels.long().reshape(-1), config.model
    if images.ndim != 4 or images.shape[1] != m.in_channels:
        raise ValueError(f"model.in_channels={m.in_channels} but the dataset's images have shape "
                         f"{tuple(images.shape[1:])}")
    if images.shape[2] % m.divisor or images.shape[3] % m.divisor:
        raise ValueError(f"images of {images.shape[2]}x{images.shape[3]} are not divisible by the classifier's "
                         f"stride {m.divisor} (len(model.channel_mult) = {len(m.channel_mult)})")
    if labels.numel() and (labels.min() < 0 or labels.max() >= m.num_classes):
        raise ValueError(f"dataset labels span {int(labels.min())}..{int(labels.max())}, outside "
                         f"0..{m.num_classes - 1} (model.num_classes={m.num_classes})")
    return images, labels


def train_noise_classifier(config: ClassifierRunConfig, *, verbose: bool = False,
                           device: Any = "cpu") -> tuple[NoisyClassifier, dict[float, float]]:
    """Train a :class:`NoiseClassifier` on noisy images of ``config.process``; return the VE-frame
    classifier (in eval mode) and its held-out accuracy at each of ``train.eval_sigmas``.

    ``classifier.info`` also holds the final training loss, the split sizes and the training time.
    """
    tc, o = config.train, config.optim
    process = get_process(config.process.name, **config.process.options)
    bad = [s for s in tc.eval_sigmas if not process.sigma_min <= s <= process.sigma_max]
    if bad:
        raise ValueError(f"train.eval_sigmas {bad} outside the process's range "
                         f"[{process.sigma_min:.4g}, {process.sigma_max:.4g}]")
    images, labels = labelled_images(config)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(tc.seed)
    perm = torch.randperm(len(labels), generator=g)
    n_test = max(1, round(tc.test_fraction * len(labels)))
    test, train = perm[:n_test], perm[n_test:]
    if len(train) < 1:
        raise ValueError(f"{len(labels)} images leave nothing to train on with test_fraction {tc.test_fraction}")
    x_train, y_train = images[train].to(device), labels[train].to(device)
    with torch.random.fork_rng(devices=[]):  # initialisation and dropout from the seed, the global RNG untouched
        torch.manual_seed(tc.seed)
        clf = NoisyClassifier(NoiseClassifier(config.model), process, config.process.time_input).to(device)
        opt = torch.optim.AdamW(clf.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
            s, warmup=o.warmup_steps, total=tc.steps, schedule=o.schedule, min_ratio=o.min_lr_ratio))
        clf.train()
        running = 0.0
        for step in range(tc.steps):
            idx = torch.randint(0, len(train), (tc.batch_size,), generator=g)
            t = sample_times(process, tc.batch_size, tc.noise_levels, p_mean=tc.p_mean, p_std=tc.p_std, generator=g)
            x0 = x_train[idx.to(device)]
            eps = torch.randn(x0.shape, generator=g).to(device)
            logits = clf.logits_native(process.add_noise(x0, eps, t.to(device)), t.to(device))
            loss = F.cross_entropy(logits, y_train[idx.to(device)], label_smoothing=tc.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"classifier loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(clf.parameters(), o.grad_clip)
            opt.step()
            sched.step()
            running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
            if verbose and ((step + 1) % tc.log_every == 0 or step + 1 == tc.steps):
                print(f"classifier step {step + 1}/{tc.steps}: loss {running:.4f}", flush=True)
    clf.eval().requires_grad_(False)
    accuracy = accuracy_by_noise(clf, images[test].to(device), labels[test].to(device), tc.eval_sigmas, tc.seed)
    clf.info = {"accuracy": accuracy, "final_loss": running, "n_train": len(train), "n_test": n_test,
                "train_seconds": time.perf_counter() - start}
    return clf, accuracy


@torch.no_grad()
def accuracy_by_noise(classifier: NoisyClassifier, images: Tensor, labels: Tensor, sigmas: Sequence[float],
                      seed: int = 0, batch_size: int = 512) -> dict[float, float]:
    """Top-1 accuracy of ``classifier`` on ``images + sigma * eps`` (VE frame) at each ``sigma``."""
    g = torch.Generator().manual_seed(seed + 1)
    out: dict[float, float] = {}
    for sigma in sigmas:
        correct = 0
        for i in range(0, len(labels), batch_size):
            x0 = images[i:i + batch_size]
            y = x0 + sigma * torch.randn(x0.shape, generator=g).to(x0)
            correct += int((classifier(y, float(sigma)).argmax(1) == labels[i:i + batch_size]).sum())
        out[float(sigma)] = correct / len(labels)
    return out


# ---------------------------------------------------------------------------------------------
# Saving and loading


def save_classifier(out_dir: str | os.PathLike[str], classifier: NoisyClassifier, config: ClassifierRunConfig,
                    accuracy: Mapping[float, float] | None = None) -> Path:
    """Write ``out_dir/model.safetensors``, ``classifier.json`` (format, config, accuracy) and a readable
    ``config.yaml``, each atomically; ``classifier.json`` is written last and marks a complete save."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(classifier.net.state_dict())
    write_atomic(out / WEIGHTS_FILE, lambda p: save_tensors(p, state, {"format": FORMAT}))
    d = classifier_config_to_dict(config)
    write_text_atomic(out / CONFIG_FILE, yaml.safe_dump(d, sort_keys=False))
    acc = accuracy if accuracy is not None else classifier.info.get("accuracy", {})
    meta = {"format": FORMAT, "config": d, "accuracy": {str(k): v for k, v in acc.items()},
            "info": {k: v for k, v in classifier.info.items() if k != "accuracy" and isinstance(v, (int, float, str))},
            "torch": torch.__version__}
    write_text_atomic(out / META_FILE, json.dumps(meta, indent=1) + "\n")
    return out


def load_classifier(path: str | os.PathLike[str], device: Any = "cpu") -> NoisyClassifier:
    """The VE-frame classifier saved by :func:`save_classifier`, in eval mode, without parameter gradients;
    ``.info`` holds its ``config`` (:class:`ClassifierRunConfig`) and ``accuracy`` by noise level."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"classifier directory {str(path)!r} does not exist")
    meta = load_json_format(path / META_FILE, FORMAT)
    try:
        config = classifier_config_from_dict(meta["config"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path / META_FILE}: bad config ({e})") from None
    net = NoiseClassifier(config.model)
    load_weights(net, load_tensors(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE))
    process = get_process(config.process.name, **config.process.options)
    clf = NoisyClassifier(net, process, config.process.time_input).to(device).eval().requires_grad_(False)
    clf.info = {**meta.get("info", {}), "config": config,
                "accuracy": {float(k): v for k, v in meta.get("accuracy", {}).items()}}
    return clf


def run_train_classifier(config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                         overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``denoisekit train-classifier CONFIG OUT [--set k=v]``: train, save to ``out_dir``, print and return
    the accuracy by noise level."""
    config = load_classifier_config(config_path, overrides)
    clf, accuracy = train_noise_classifier(config, verbose=True)
    save_classifier(out_dir, clf, config, accuracy)
    print(f"held-out accuracy by noise level ({clf.info['n_test']} images, {clf.info['train_seconds']:.0f} s):")
    for sigma, acc in accuracy.items():
        print(f"  sigma {sigma:<8g} {acc:.3f}")
    print(f"saved to {out_dir}")
    return {"out": str(out_dir), "accuracy": accuracy, **{k: v for k, v in clf.info.items() if k != "accuracy"}}
