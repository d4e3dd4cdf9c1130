"""Train a diffusion model on a 2-D toy dataset, and load the run back as a denoiser.

:func:`train_toy2d` runs :class:`~denoisekit.train.recipes.toy2d.Toy2DRecipe` on the engine
(:mod:`denoisekit.engine.loop`, in a temporary run directory) and exports a run directory of three files,
written atomically (temp file, fsync, ``os.replace``: :mod:`denoisekit.io`) so an interrupted run never
leaves a half-written file:

- ``config.json``: every setting (:class:`Toy2DConfig`: data, process and its kwargs, prediction,
  model config, loss, optimiser, steps, seed); enough to rebuild the model;
- ``model.safetensors``: the EMA weights (Polyak averaging, as DDPM samples from; Ho et al. 2020, App. B);
- ``loss.csv``: ``step,loss,lr`` with the loss averaged over each logging interval.

Nothing is unpickled: :func:`load_run` reads JSON and safetensors only.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._utils import check_choice, lookup
from ..data.toy2d import DATASETS, POINTS_SUFFIXES, is_points_file, read_points, sample_toy2d
from ..losses import DiffusionLoss
from ..models import MODELS
from ..prediction import PREDICTIONS, Clock, Denoiser, prediction_rule
from ..process import PROCESSES, get_process
from ..engine.checkpoint import load_weights
from ..io import load_json, load_tensors, save_tensors, write_atomic
from .meanflow import MeanFlowLoss, check_meanflow

CONFIG_FILE, WEIGHTS_FILE, LOSS_FILE = "config.json", "model.safetensors", "loss.csv"
#: A run trained on a points file keeps its own copy: what it trained on, whatever happens to the file later.
POINTS_FILE = "points.npy"
FORMAT = "denoisekit.toy2d/1"
#: Held-out sets are drawn with seeds ``seed + k * HELD_OUT_OFFSET``, k >= 1 (training uses ``seed``).
HELD_OUT_OFFSET = 1_000_003


@dataclass(frozen=True)
class Toy2DConfig:
    """Everything a 2-D training run depends on. ``model_config`` holds the fields of the model's
    own config dataclass (``TimeLinearConfig`` for ``"timelinear"``, ``MLPConfig`` for ``"mlp"``; completed with
    its defaults on creation, so a saved run names its network and every field of it);
    ``loss`` is the :class:`DiffusionLoss`, or a :class:`~denoisekit.train.meanflow.MeanFlowLoss` (MeanFlow: a
    rectified flow whose network takes a second time input, ``model_config["second_time"]``)."""

    out: str = "runs/toy2d"
    data: str = "moons"
    n_train: int = 100_000
    process: str = "ddpm"
    process_kwargs: dict[str, Any] = field(default_factory=dict)
    prediction: str = "eps"
    time_input: str = "model"
    sigma_data: float = 1.0  # the toy datasets have unit scale (EDM's 0.5 is for images in [-1, 1])
    model: str = "timelinear"  # CS492D's network; "mlp" (the residual MLP) was the default before
    model_config: dict[str, Any] = field(default_factory=dict)
    loss: DiffusionLoss | MeanFlowLoss = field(default_factory=DiffusionLoss)
    steps: int = 3000
    batch: int = 256
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    save_every: int = 0  # 0: only at the end

    def __post_init__(self) -> None:
        if not is_points_file(self.data) and self.data not in DATASETS:
            raise ValueError(f"unknown dataset {self.data!r}; allowed: {', '.join(DATASETS)}, or a points file "
                             f"({', '.join(POINTS_SUFFIXES)})")
        check_choice("process", self.process, PROCESSES)
        check_choice("prediction", self.prediction, PREDICTIONS)
        check_choice("time_input", self.time_input, ("model", "t", "log_sigma"))
        check_choice("model", self.model, MODELS)
        if not isinstance(self.loss, (DiffusionLoss, MeanFlowLoss)):
            raise ValueError(f"loss must be a DiffusionLoss or a MeanFlowLoss, got {type(self.loss).__name__}")
        for name in ("n_train", "steps", "batch", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0 or not isinstance(self.save_every, int) \
                or self.save_every < 0:
            raise ValueError(f"warmup and save_every must be integers >= 0, got {self.warmup!r}, {self.save_every!r}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.sigma_data <= 0:
            raise ValueError("need lr > 0, sigma_data > 0, weight_decay >= 0 and grad_clip >= 0 (0: no clipping)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        try:  # fail at configuration time, not after a training run
            get_process(self.process, **self.process_kwargs)
        except TypeError as e:
            raise ValueError(f"bad process_kwargs for {self.process!r}: {e}") from None
        try:
            full = dataclasses.asdict(model_config(self))
        except TypeError as e:
            raise ValueError(f"bad model_config for {self.model!r}: {e}") from None
        # Store every field, not only the overrides: a saved run must not change if defaults do.
        object.__setattr__(self, "model_config", full)
        if isinstance(self.loss, MeanFlowLoss):
            check_meanflow(get_process(self.process, **self.process_kwargs), self.prediction, self.time_input,
                           full.get("second_time"), ("process", "prediction", "time_input", "model_config.second_time"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "Toy2DConfig":
        """Inverse of :meth:`to_dict`; a missing or unknown key is a ``ValueError`` naming it and ``source``."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        fmt = d.pop("format", None)
        if fmt != FORMAT:
            raise ValueError(f"{source}: key 'format' is {fmt!r}, expected {FORMAT!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(names - set(d))
        if unknown or missing:
            raise ValueError(f"{source}: " + "; ".join(
                ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
                + ([f"missing key(s) {', '.join(missing)}"] if missing else [])))
        try:
            if not isinstance(d["loss"], dict):
                raise ValueError(f"key 'loss' must be an object, got {d['loss']!r}")
            d["loss"] = (MeanFlowLoss if d["loss"].get("objective") == "meanflow" else DiffusionLoss)(**d["loss"])
            config = cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None
        return config


def model_config(config: Toy2DConfig) -> Any:
    """The model's config dataclass built from ``config.model_config`` (2-D input by default; for
    ``"timelinear"`` without a ``time_scale``, :func:`step_index_scale` of the run's clock)."""
    cls = lookup("model", MODELS, config.model).config_class  # type: ignore[attr-defined]
    defaults: dict[str, Any] = {"dim": 2}
    if config.model == "timelinear" and "time_scale" not in config.model_config:
        defaults["time_scale"] = step_index_scale(config)
    return cls(**{**defaults, **config.model_config})


def step_index_scale(config: Toy2DConfig) -> float:
    """The ``time_scale`` that puts the network's time on DDPM's step-index scale: 999 units across the
    process's range (``t`` in 1e-3 .. 1 - 1e-3, where every clock is finite): 1 for DDPM's own step index, 999
    for a flow's ``t`` in [0, 1], about 380 for EDM's ``c_noise``. :class:`~denoisekit.models.mlp.TimeLinearMLP`'s
    frequencies (the course's, 1e-4 .. 1) are meant for that scale; on the course's flow run (seed 0), ``t``
    unscaled scores Chamfer 28.7, scaled by 1000 21.9 (``benchmarks/RESULTS.md``)."""
    process = get_process(config.process, **config.process_kwargs)
    clock = Clock(process, prediction_rule(config.prediction).time_input or config.time_input)
    ends = torch.tensor([1e-3, 1 - 1e-3], dtype=torch.float64)
    span = float((clock.time(ends)[1] - clock.time(ends)[0]).abs())
    if not (math.isfinite(span) and span > 0):
        return 1.0
    return float(f"{999 * (1 - 2e-3) / span:.6g}")


def build_denoiser(config: Toy2DConfig) -> Denoiser:
    """A freshly initialised network (seeded by ``config.seed``) wrapped as a :class:`Denoiser`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = MODELS[config.model](model_config(config))
    process = get_process(config.process, **config.process_kwargs)
    return Denoiser(net, process, config.prediction, time_input=config.time_input,  # type: ignore[arg-type]
                    sigma_data=config.sigma_data)


def save_weights(net: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``net``'s ``state_dict`` as a safetensors file, written atomically."""
    write_atomic(path, lambda tmp: save_tensors(tmp, net.state_dict(), metadata))


def load_run(run_dir: str | os.PathLike[str]) -> tuple[Denoiser, Toy2DConfig]:
    """Rebuild the EMA denoiser of a run directory written by :func:`train_toy2d` (in eval mode).

    Raises ``FileNotFoundError`` for a missing directory or file and ``ValueError`` naming the file
    and key for anything malformed. Only JSON and safetensors are read; nothing is unpickled.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    cfg_path, w_path = run / CONFIG_FILE, run / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing (is {str(run)!r} a finished 2-D training run?)")
    config = Toy2DConfig.from_dict(load_json(cfg_path), str(cfg_path))
    denoiser = build_denoiser(config)
    state = load_tensors(w_path)
    load_weights(denoiser.net, state, str(w_path))
    return denoiser.eval().requires_grad_(False), config


def training_points(config: Toy2DConfig, run_dir: str | os.PathLike[str] | None = None) -> Tensor:
    """The run's training set: ``n_train`` points of a built-in dataset drawn with ``seed``, or every point of
    its points file (the run's own copy, :data:`POINTS_FILE`, once it has one)."""
    if not is_points_file(config.data):
        return sample_toy2d(config.data, config.n_train, config.seed)
    copy = Path(config.out if run_dir is None else run_dir) / POINTS_FILE
    return read_points(copy if copy.is_file() else config.data)


def held_out(config: Toy2DConfig, n: int, draw: int = 0, run_dir: str | os.PathLike[str] | None = None) -> Tensor:
    """``n`` fresh points of the run's dataset, independent of its training set; each ``draw``
    (0, 1, 2, ...) is another independent set (draws >= 1 give the data-vs-data reference). A points file has
    no fresh points: each draw is a seeded subset of ``min(n, N)`` of its points (the course's reference, the
    data itself), so the data-vs-data reference of overlapping subsets is a lower floor."""
    if draw < 0:
        raise ValueError(f"draw must be >= 0, got {draw}")
    seed = config.seed + HELD_OUT_OFFSET * (draw + 1)
    if not is_points_file(config.data):
        return sample_toy2d(config.data, n, seed)
    points = training_points(config, run_dir)
    return points[torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:n]]


def final_loss(run_dir: str | os.PathLike[str]) -> float:
    """The last logged loss of a run (``nan`` if none was logged)."""
    with open(Path(run_dir) / LOSS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["loss"]) if rows else math.nan
