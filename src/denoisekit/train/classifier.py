"""Training a noisy-image classifier for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

The classifier learns ``p(c | x_t, t)`` on images noised by a process exactly as the diffusion model is
trained: times drawn by :func:`~denoisekit.losses.sample_times` (``uniform``, ``lognormal``,
``logit_normal``), ``x_t = alpha x0 + sigma eps``, cross-entropy on the labels, AdamW with warm-up and
a cosine learning rate (:func:`~denoisekit.engine.optim.lr_factor`). It is a recipe
(:class:`NoiseClassifierRecipe`) on the training engine, so a run is a run directory (log, checkpoints,
exact resume, several processes) and each sample's noise level and noise come from its own seeded
generator. A held-out fraction of the data measures accuracy at a list of VE-frame noise levels. A config
file (``configs/classifier/digits.yaml``)::

    data:    {name: digits, size: 8, split: all}          # any labelled image dataset
    model:   {in_channels: 1, num_classes: 10, channels: 32, channel_mult: [1, 2]}
    process: {name: edm, time_input: log_sigma}          # the process (and time input) to guide
    optim:   {lr: 2.0e-3, weight_decay: 0.01, schedule: cosine}
    train:   {steps: 1500, batch_size: 128, noise_levels: lognormal}

A saved classifier is a directory (a run directory, when trained there) with ``model.safetensors`` and
``classifier.json`` (format, the resolved config, accuracy by noise level), both written atomically; :func:`load_classifier` returns the
VE-frame :class:`~denoisekit.models.classifier.NoisyClassifier` that
:class:`~denoisekit.guidance.ClassifierGuidance` takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._utils import check_choice, lookup, randn
from ..engine import Engine, Recipe
from ..engine.checkpoint import load_weights
from ..io import load_json_format, load_tensors, save_tensors, write_atomic, write_text_atomic
from ..losses import NOISE_LEVELS, NoiseLevels, sample_times
from ..models.classifier import NoiseClassifier, NoiseClassifierConfig, NoisyClassifier
from ..options import apply_overrides, build_entry, read_config_file, section_to_dict, sections_from_dict
from ..prediction import Clock
from ..process import get_process
from .config import DataConfig, OptimConfig, ProcessConfig, warmup_warning

FORMAT = "denoisekit.noise_classifier/1"
WEIGHTS_FILE, META_FILE, CONFIG_FILE = "model.safetensors", "classifier.json", "config.yaml"


@dataclass(frozen=True)
class ClassifierTraining:
    """The run: ``steps`` AdamW steps on batches of ``batch_size`` from the engine's seeded data stream;
    noise levels drawn by ``noise_levels`` (with ``p_mean``, ``p_std``; see :mod:`denoisekit.losses`);
    ``test_fraction`` of the data held out (by ``seed``) to measure accuracy at the VE-frame noise levels
    ``eval_sigmas``. The engine's keys as in :class:`~denoisekit.train.config.TrainConfig`; by default one
    checkpoint at the end (``save_every: 0``) and the first non-finite step stops the run."""

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
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16"] = "no"
    save_every: int = 0
    keep_last: int = 1
    max_nan_steps: int = 1
    device: Literal["auto", "cpu"] = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.eval_sigmas, list):
            object.__setattr__(self, "eval_sigmas", tuple(float(s) for s in self.eval_sigmas))
        check_choice("noise level distribution", self.noise_levels, NOISE_LEVELS)
        check_choice("train.mixed_precision", self.mixed_precision, ("no", "bf16"))
        check_choice("train.device", self.device, ("auto", "cpu"))
        for name in ("steps", "batch_size", "log_every", "grad_accum", "keep_last", "max_nan_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise ValueError(f"train.save_every must be an integer >= 0 (0: at the end), got {self.save_every!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum "
                             f"({self.grad_accum})")
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
    logits), optimiser and loop, one frozen dataclass per section as in :mod:`denoisekit.train.config`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: NoiseClassifierConfig = field(default_factory=NoiseClassifierConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=0.01, schedule="cosine"))
    train: ClassifierTraining = field(default_factory=ClassifierTraining)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": NoiseClassifierConfig, "process": ProcessConfig,
                             "optim": OptimConfig, "train": ClassifierTraining}


def classifier_config_to_dict(config: ClassifierRunConfig) -> dict[str, Any]:
    """The YAML layout: one mapping per section, a section's options flattened into it."""
    return {name: section_to_dict(getattr(config, name)) for name in SECTIONS}


def classifier_config_from_dict(d: Mapping[str, Any], overrides: Sequence[str] = ()) -> ClassifierRunConfig:
    """Build and validate a :class:`ClassifierRunConfig` from the YAML layout and ``"section.key=value"``
    overrides (typed per key); errors name the key and list the valid ones."""
    raw = apply_overrides(d, overrides, SECTIONS)
    sections_from_dict(raw, SECTIONS)  # unknown sections and keys fail here, before the defaults below
    # the classifier's optimiser defaults differ from a diffusion run's: keys not given take them
    raw["optim"] = {**section_to_dict(ClassifierRunConfig().optim), **(raw.get("optim") or {})}
    return ClassifierRunConfig(**sections_from_dict(raw, SECTIONS))


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


class NoiseClassifierRecipe(Recipe):
    """Cross-entropy of a :class:`NoiseClassifier` on ``x_t = alpha x0 + sigma eps`` of ``config.process``
    (Dhariwal & Nichol 2021, Sec. 4), each sample's time and noise from its own generator; after the last
    step, the held-out accuracy by noise level and the files of :func:`save_classifier` in the run dir."""

    name = "noise_classifier"
    resumable = Recipe.resumable + ("train.eval_sigmas", "train.device")

    def __init__(self, config: ClassifierRunConfig):
        super().__init__(config)
        tc = config.train
        self.process = get_process(config.process.name, **config.process.options)
        bad = [s for s in tc.eval_sigmas if not self.process.sigma_min <= s <= self.process.sigma_max]
        if bad:
            raise ValueError(f"train.eval_sigmas {bad} outside the process's range "
                             f"[{self.process.sigma_min:.4g}, {self.process.sigma_max:.4g}]")
        self.clock = Clock(self.process, config.process.time_input)
        message = warmup_warning(config.optim.warmup_steps, tc.steps)
        if message is not None:
            warnings.warn(message, stacklevel=2)
        self.held_out: tuple[Tensor, Tensor] | None = None
        self.running_loss: float | None = None  # exponential average of the loss (0.95), for ``info``
        self.last_loss: Tensor | None = None
        self.result: NoisyClassifier | None = None

    def config_to_dict(self) -> dict[str, Any]:
        return classifier_config_to_dict(self.config)

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return classifier_config_to_dict(load_classifier_config(path))

    def build_dataset(self) -> Any:
        """The training split as items; the seeded ``test_fraction`` is held out for :meth:`finish`."""
        tc = self.config.train
        images, labels = labelled_images(self.config)
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(tc.seed))
        n_test = max(1, round(tc.test_fraction * len(labels)))
        test, train = perm[:n_test], perm[n_test:]
        if len(train) < 1:
            raise ValueError(f"{len(labels)} images leave nothing to train on with test_fraction {tc.test_fraction}")
        self.held_out = (images[test], labels[test])
        return [{"image": images[i], "label": labels[i]} for i in train.tolist()]

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Any:
        return {"image": torch.stack([it["image"] for it in items]), "label": torch.stack([it["label"] for it in items])}

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        with torch.random.fork_rng(devices=[]):  # the initialisation from the seed, the global RNG untouched
            torch.manual_seed(self.config.train.seed)
            return {"net": NoiseClassifier(self.config.model)}

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        tc, dev = self.config.train, engine.device
        x0, y = batch["image"].to(dev), batch["label"].to(dev)
        t = sample_times(self.process, len(x0), tc.noise_levels, p_mean=tc.p_mean, p_std=tc.p_std, generator=gens)
        t = t.to(dev)
        x_t = self.process.add_noise(x0, randn(x0.shape, gens, device=dev), t)
        logits = self.module("net")(x_t, self.clock.time(t).to(device=dev, dtype=x_t.dtype))
        loss = F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
        self.last_loss = loss.detach()
        return {"loss": loss}

    def after_update(self, engine: Engine) -> None:
        assert self.last_loss is not None
        v = float(self.last_loss)
        self.running_loss = v if self.running_loss is None else 0.95 * self.running_loss + 0.05 * v

    def state(self) -> dict[str, Any]:
        return {"running_loss": self.running_loss}

    def load_state(self, state: Mapping[str, Any], source: str) -> None:
        self.running_loss = state.get("running_loss")

    def finish(self, engine: Engine) -> None:
        assert self.held_out is not None
        tc, (x, y) = self.config.train, self.held_out
        if engine.progress:
            tqdm.write(f"held-out accuracy at {len(tc.eval_sigmas)} noise levels on {len(y)} images")
        clf = NoisyClassifier(self.modules["net"], self.process, self.config.process.time_input)
        clf.eval().requires_grad_(False)
        accuracy = accuracy_by_noise(clf, x.to(engine.device), y.to(engine.device), tc.eval_sigmas, tc.seed)
        clf.info = {"accuracy": accuracy, "final_loss": self.running_loss, "n_train": len(engine.dataset),
                    "n_test": len(y), "train_seconds": engine.elapsed}
        save_classifier(engine.out, clf, self.config, accuracy)
        self.result = clf


def train_noise_classifier(config: ClassifierRunConfig, *, verbose: bool = False, device: Any = None,
                           out: str | os.PathLike[str] | None = None,
                           resume: bool = False) -> tuple[NoisyClassifier, dict[float, float]]:
    """Train a :class:`NoiseClassifier` on noisy images of ``config.process`` (a
    :class:`NoiseClassifierRecipe` run on the engine, into ``out`` or a temporary directory); return the
    VE-frame classifier (in eval mode) and its held-out accuracy at each of ``train.eval_sigmas``.

    ``device`` (default ``train.device``) picks the CPU or accelerate's device; ``classifier.info`` also holds
    the final training loss, the split sizes and the training time. The caller's global RNG is untouched.
    """
    if device is not None:
        target = "cpu" if torch.device(device).type == "cpu" else "auto"
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=target))
    recipe = NoiseClassifierRecipe(config)
    with contextlib.ExitStack() as stack:
        run = out if out is not None else stack.enter_context(tempfile.TemporaryDirectory(prefix="denoisekit-clf-"))
        with torch.random.fork_rng(devices=[]):
            Engine(recipe, run, resume=resume, progress=verbose).fit()
        # the main process finished the run; the others read what it saved (after the engine's barrier)
        clf = recipe.result if recipe.result is not None else load_classifier(run)
    if device is not None:
        clf = clf.to(device)
    return clf, clf.info["accuracy"]


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
                         overrides: Sequence[str] = (), *, resume: bool = False,
                         progress: bool = True) -> dict[str, Any]:
    """``denoisekit train-classifier CONFIG --out OUT [--set k=v] [--resume]``: train into the run directory
    ``out_dir`` (which then also holds :func:`save_classifier`'s files), print and return the accuracy by
    noise level; ``progress``: what it is doing and a progress bar before that (``--quiet``: off)."""
    config = load_classifier_config(config_path, overrides)
    tc = config.train
    if progress:
        print(f"classifier: {config.model.num_classes} classes of {config.data.name}, {tc.steps} steps of batch "
              f"{tc.batch_size}, {tc.test_fraction:.0%} of the images held out; reading the data")
    clf, accuracy = train_noise_classifier(config, verbose=progress, out=out_dir, resume=resume)
    print(f"held-out accuracy by noise level ({clf.info['n_test']} images, {clf.info['train_seconds']:.0f} s):")
    for sigma, acc in accuracy.items():
        print(f"  sigma {sigma:<8g} {acc:.3f}")
    print(f"saved to {out_dir}")
    return {"out": str(out_dir), "accuracy": accuracy, **{k: v for k, v in clf.info.items() if k != "accuracy"}}
