"""Training the FID feature network (:class:`~denoisekit.eval.features.FeatureClassifier`) on the engine.

:class:`FeatureNetworkRecipe` fits the VGG-style classifier to labelled images in [-1, 1] with AdamW, a
linear warm-up over the first 30% of the steps then a cosine decay (the one-cycle profile of Smith & Topin
2019) and cross-entropy with label smoothing (Szegedy et al. 2016) summed over the label heads (label ``-1``:
missing, ignored). A seeded ``test_fraction`` of the images is held out. What a step draws comes from the
engine's per-sample generators: the random shift and pixel noise of the augmentation and the dropout mask of
the features, so the weights depend on the seed only and 1 process equals N.

BatchNorm normalises by the statistics of groups of ``train.bn_batch`` samples (0: each process's whole
micro-batch); its running statistics are not updated while training but estimated after the last step over
the un-augmented training images with the final weights ("precise BN", Wu & Johnson 2021, Sec. 3), which
keeps them independent of how the batch was split. :meth:`FeatureNetworkRecipe.finish` measures the
held-out accuracy and exports ``model.safetensors`` and ``meta.json`` (the feature-network cache format of
:mod:`denoisekit.eval.features`) into the run directory.

:func:`train_feature_network` runs it in this process, or, when this process already holds a GPU or
multi-process ``accelerate`` state (a training run asking for FID), in a fresh child process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import randn
from ..engine import Engine, Recipe
from ..engine.checkpoint import load_weights
from ..io import load_tensors, save_tensors, save_tensors_atomic, write_text_atomic
from .feature_net import (FORMAT, META_FILE, WEIGHTS_FILE, ClassifierConfig, FeatureClassifier, cache_key,
                          resize_images)

if TYPE_CHECKING:
    from ..engine.loop import Engine as EngineT

WARMUP_FRACTION = 0.3  # OneCycleLR's pct_start: the share of the steps spent warming up


@dataclass(frozen=True)
class FeatureTrain:
    """The engine's ``train`` section of a feature-network run (``steps`` from the epochs of data)."""

    steps: int
    batch_size: int
    seed: int = 0
    bn_batch: int = 0          # BatchNorm statistics over groups of this many samples (0: the micro-batch)
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16"] = "no"
    log_every: int = 10
    save_every: int = 0        # 0: one checkpoint at the end
    keep_last: int = 1
    max_nan_steps: int = 5
    device: Literal["auto", "cpu"] = "cpu"


@dataclass(frozen=True)
class FeatureOptim:
    """AdamW and the LR profile (:func:`~denoisekit.engine.optim.lr_factor`) of a feature-network run."""

    lr: float
    weight_decay: float
    warmup_steps: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0


@dataclass(frozen=True)
class FeatureData:
    num_workers: int = 0


@dataclass(frozen=True)
class FeatureRunConfig:
    """A feature-network run: the network and its training (``network``, all of it in the cache key), the
    data's identity (``name``, ``num_classes``, ``key``) and the engine's sections derived from them."""

    network: ClassifierConfig
    name: str
    num_classes: tuple[int, ...]
    key: str
    train: FeatureTrain
    optim: FeatureOptim
    data: FeatureData = field(default_factory=FeatureData)

    @classmethod
    def create(cls, network: ClassifierConfig, name: str, images: Tensor, labels: Tensor,
               num_classes: Sequence[int], **train: Any) -> FeatureRunConfig:
        """The run for ``images`` ``(N, C, H, W)`` and ``labels`` ``(N, heads)``: ``network.epochs`` passes
        over the training split in batches of ``network.batch_size`` (at most the split's size)."""
        n_train = len(labels) - held_out_size(len(labels), network.test_fraction)
        batch = min(network.batch_size, n_train)
        steps = max(1, math.ceil(network.epochs * n_train / batch))
        return cls(network, name, tuple(int(c) for c in num_classes),
                   cache_key(name, images, labels, [int(c) for c in num_classes], network),
                   FeatureTrain(steps=steps, batch_size=batch, seed=network.seed, **train),
                   FeatureOptim(lr=network.lr, weight_decay=network.weight_decay,
                                warmup_steps=round(WARMUP_FRACTION * steps)))


def held_out_size(n: int, fraction: float) -> int:
    """Images held out of ``n`` for ``test_fraction``; at least two are left to train on."""
    n_test = max(1, round(fraction * n))
    if n - n_test < 2:
        raise ValueError(f"need at least {n_test + 2} images to train with test_fraction {fraction}")
    return n_test


def augment(x: Tensor, shift: int, noise: float, gens: Sequence[torch.Generator]) -> Tensor:
    """Random translation by up to ``shift`` pixels (replicate padding) and Gaussian pixel noise of std
    ``noise``, drawn per image from its generator."""
    if shift > 0:
        b, c, h, w = x.shape
        dy, dx = torch.stack([torch.randint(0, 2 * shift + 1, (2,), generator=g) for g in gens], 1).to(x.device)
        padded = F.pad(x, (shift,) * 4, mode="replicate")
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, padded.shape[-1])
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
        x = x.gather(3, cols)
    if noise > 0:
        x = x + noise * randn(x.shape, gens, device=x.device)
    return x


def dropout_masks(gens: Sequence[torch.Generator], dim: int, p: float, device: Any) -> Tensor:
    """Inverted-dropout multipliers ``(B, dim)`` (Srivastava et al. 2014), one row per generator."""
    if p == 0:
        return torch.ones(len(gens), dim, device=device)
    keep = torch.full((dim,), 1 - p)
    return torch.stack([torch.bernoulli(keep, generator=g) for g in gens]).to(device) / (1 - p)


class TrainingForward(nn.Module):
    """The network's training forward, as one module for the engine to wrap: BatchNorm over groups of
    ``bn_batch`` images (0: all) and the given dropout multipliers; returns the logits of every head."""

    def __init__(self, net: FeatureClassifier, bn_batch: int = 0):
        super().__init__()
        self.net, self.bn_batch = net, bn_batch

    def forward(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        g = self.bn_batch or len(x)
        h = torch.cat([self.net.features(x[i:i + g]) for i in range(0, len(x), g)]) * keep
        return [head(h) for head in self.net.heads]


def head_accuracy(model: FeatureClassifier, x: Tensor, y: Tensor) -> list[float]:
    """Top-1 accuracy per head of ``model`` on images ``x`` with labels ``y`` ``(N, heads)`` (``-1``: skipped)."""
    pred = model.predict(x)
    pred = pred[:, None] if pred.ndim == 1 else pred
    return [float((pred[:, k] == y[:, k])[y[:, k] >= 0].double().mean()) for k in range(y.shape[1])]


def _batchnorms(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


class FeatureNetworkRecipe(Recipe):
    """The feature network's run over ``images`` ``(N, C, H, W)`` in [-1, 1] and ``labels`` ``(N, heads)``."""

    name = "feature_network"

    def __init__(self, config: FeatureRunConfig, images: Tensor, labels: Tensor):
        super().__init__(config)
        self.images, self.labels = images, labels
        self.held_out: tuple[Tensor, Tensor] | None = None
        self.n_train = 0

    def config_to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self.config)))

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(Path(path).read_text())

    def build_dataset(self) -> Any:
        c = self.config.network
        perm = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(c.seed))
        n_test = held_out_size(len(self.labels), c.test_fraction)
        test, train = perm[:n_test], perm[n_test:]
        xs = resize_images(self.images, c.image_size)  # once: augmentation then works at the network's size
        self.held_out, self.n_train = (xs[test], self.labels[test]), len(train)
        return [{"image": xs[i], "label": self.labels[i]} for i in train.tolist()]

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Any:
        return {"image": torch.stack([it["image"] for it in items]), "label": torch.stack([it["label"] for it in items])}

    def build(self, engine: EngineT) -> dict[str, nn.Module]:
        c, ncls = self.config.network, list(self.config.num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            net = FeatureClassifier(self.images.shape[1], ncls if len(ncls) > 1 else ncls[0], c)
        for bn in _batchnorms(net):  # batch statistics only; the running ones come after training
            bn.track_running_stats = False
        return {"net": TrainingForward(net, self.config.train.bn_batch)}

    def check_model(self, engine: EngineT) -> None:
        g = self.config.train.bn_batch
        if g and engine.micro % g:
            raise ValueError(f"train.bn_batch={g} must divide each process's micro-batch of {engine.micro} images")

    @property
    def network(self) -> FeatureClassifier:
        return self.modules["net"].net

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: EngineT) -> dict[str, Tensor]:
        c = self.config.network
        x, y = batch["image"].to(engine.device), batch["label"].to(engine.device)
        x = augment(x, c.shift, c.noise, gens)
        logits = self.module("net")(x, dropout_masks(gens, c.feature_dim, c.dropout, engine.device))
        # each head's mean over the labels present in the global micro-batch (the processes' gradients are
        # averaged, hence the factor world): N processes then equal 1 even when labels are missing
        known = (y >= 0).sum(0).float()
        if engine.world > 1:
            known = engine.acc.reduce(known, "sum")
        loss = sum(F.cross_entropy(lg, y[:, k], ignore_index=-1, label_smoothing=c.label_smoothing, reduction="sum")
                   * engine.world / known[k].clamp(min=1) for k, lg in enumerate(logits))
        return {"loss": loss}

    def weights(self) -> dict[str, Tensor]:
        return dict(self.network.state_dict())

    def load_weights(self, tensors: Mapping[str, Tensor], source: str) -> None:
        load_weights(self.network, tensors, source)

    @torch.no_grad()
    def precise_batchnorm(self, engine: EngineT) -> None:
        """Running BatchNorm statistics: the average over the training images, in the training groups, of
        each group's statistics under the final weights."""
        net, c = self.network, self.config.train
        xs = torch.stack([it["image"] for it in engine.dataset])
        bns = _batchnorms(net)
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.track_running_stats, bn.momentum = True, None  # momentum None: a cumulative average
            bn.reset_running_stats()
        net.train()
        g = min(c.bn_batch or c.batch_size, len(xs))
        for i in range(0, len(xs) - g + 1, g):  # whole groups only: a short last one would skew the average
            net.features(xs[i:i + g].to(engine.device))
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        net.eval()

    def finish(self, engine: EngineT) -> None:
        net, c = self.network, self.config
        self.precise_batchnorm(engine)
        assert self.held_out is not None
        x, y = self.held_out
        acc = head_accuracy(net, x.to(engine.device), y.to(engine.device))
        info = {"test_accuracy": sum(acc) / len(acc), "test_accuracy_per_head": acc, "n_train": self.n_train,
                "n_test": len(y), "train_seconds": engine.elapsed}
        meta = {"format": FORMAT, "key": c.key, "name": c.name, "in_channels": net.in_channels,
                "num_classes": list(c.num_classes), "multi_head": net.multi_head,
                "config": dataclasses.asdict(c.network), "info": info, "torch": torch.__version__}
        save_tensors_atomic(engine.out / WEIGHTS_FILE, {k: v.contiguous() for k, v in net.state_dict().items()})
        write_text_atomic(engine.out / META_FILE, json.dumps(meta, indent=2) + "\n")  # last: marks a complete export


# ------------------------------------------------------------------------------------------ running it

@contextmanager
def _deterministic(threads: int = 1) -> Iterator[None]:
    """Deterministic kernels, a fixed thread count and the caller's global RNG, restored afterwards: the
    trained weights then depend on the seed only (on one machine; other CPUs may differ in the last bits)."""
    prev_det, prev_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.set_num_threads(prev_threads)


def _accelerate_state() -> Literal["none", "local", "busy"]:
    """``none``: accelerate is not set up in this process; ``local``: set up for one CPU process (a run of
    ours fits in); ``busy``: a GPU or multi-process run owns it (a CPU run of ours cannot start here)."""
    from accelerate.state import PartialState

    if not PartialState._shared_state:
        return "none"
    state = PartialState()
    return "local" if state.num_processes == 1 and state.device.type == "cpu" else "busy"


def _fit(recipe: FeatureNetworkRecipe, run_dir: Path, verbose: bool) -> None:
    with _deterministic():
        Engine(recipe, run_dir, progress=verbose).fit()


def fit_in_process(recipe: Recipe, run_dir: str | os.PathLike[str], *, verbose: bool = False) -> Path:
    """Train ``recipe`` into ``run_dir`` on this process's CPU, single-threaded with deterministic kernels;
    ``ValueError`` when a GPU or multi-process run already owns this process's accelerate state."""
    run_dir, state = Path(run_dir), _accelerate_state()
    if state == "busy":
        raise ValueError("cannot train a feature network inside a GPU or multi-process run; train it once "
                         "outside (e.g. 'denoisekit eval'), it is cached")
    try:
        _fit(recipe, run_dir, verbose)
    finally:
        if state == "none":  # leave accelerate unset, so a later GPU run is not bound to our CPU state
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
    return run_dir


#: What ``accelerate launch`` / torchrun set for their processes: a child of one must not join the group.
_LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE",
               "OMPI_COMM_WORLD_SIZE")


def train_feature_network(config: FeatureRunConfig, images: Tensor, labels: Tensor, run_dir: str | os.PathLike[str],
                          *, verbose: bool = False) -> Path:
    """Train a feature-network run into ``run_dir`` (which then holds the exported ``model.safetensors`` and
    ``meta.json``) and return it; in a child process when another run owns this process's accelerate."""
    run_dir = Path(run_dir)
    if _accelerate_state() != "busy":
        return fit_in_process(FeatureNetworkRecipe(config, images, labels), run_dir, verbose=verbose)
    with tempfile.TemporaryDirectory() as tmp:
        save_tensors(Path(tmp) / "data.safetensors", {"images": images, "labels": labels})
        (Path(tmp) / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV and not k.startswith("ACCELERATE_")}
        env["CUDA_VISIBLE_DEVICES"] = ""  # the child trains on the CPU and leaves the GPUs to the run
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", __name__, tmp, str(run_dir), "1" if verbose else "0"]
        proc = subprocess.run(cmd, check=False, env=env, stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        if proc.returncode:
            raise RuntimeError(f"training the feature network in a child process failed:\n{(proc.stdout or '')[-3000:]}")
    return run_dir


def _config_from_dict(d: Mapping[str, Any]) -> FeatureRunConfig:
    net = {k: tuple(v) if isinstance(v, list) else v for k, v in d["network"].items()}
    optim = {k: tuple(v) if isinstance(v, list) else v for k, v in d["optim"].items()}
    return FeatureRunConfig(ClassifierConfig(**net), d["name"], tuple(d["num_classes"]), d["key"],
                            FeatureTrain(**d["train"]), FeatureOptim(**optim), FeatureData(**d["data"]))


if __name__ == "__main__":  # the child process of train_feature_network: IN_DIR RUN_DIR VERBOSE
    data = load_tensors(Path(sys.argv[1]) / "data.safetensors")
    run_config = _config_from_dict(json.loads((Path(sys.argv[1]) / "config.json").read_text()))
    _fit(FeatureNetworkRecipe(run_config, data["images"], data["labels"]), Path(sys.argv[2]), sys.argv[3] == "1")
