"""The training loop: one :class:`Trainer` on Hugging Face ``accelerate``, for one process or many.

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

import contextlib
import functools
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._utils import check_choice, seeded_generators
from ..config import (Config, apply_overrides, build_dataset, build_denoiser, build_model, config_from_dict,
                      config_to_dict, load_config, save_config)
from ..prediction import Denoiser
from ..sampling import sample
from .checkpoint import (STATE_FILE, capture_rng, clean_stale, latest_checkpoint, load_checkpoint, load_json, load_weights,
                         load_tensors, restore_rng, save_checkpoint)
from .conditioning import CONDITIONS, collate
from .data_stream import _LOADER, _NOISE, EpochIndexed, StreamSampler, stream_seeds
from .ema import EMA
from .latent import check_latent_resume, decode, latent_dataset
from .runlog import RunLog, save_image_grid
from ..guidance import ClassifierFreeGuidance

RUN_CONFIG, CHECKPOINTS, SAMPLES = "config.yaml", "checkpoints", "samples"
#: Keys that may change when resuming: they do not alter the trained weights.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.save_every", "train.keep_last",
                     "train.max_nan_steps", "data.num_workers", "sample.", "latent.cache")
MetricsHook = Callable[[Denoiser, int], Mapping[str, float]]


class TrainingDiverged(FloatingPointError):
    """Raised after ``train.max_nan_steps`` consecutive steps with a non-finite loss or gradient."""


def lr_factor(step: int, *, warmup: int, total: int, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """LR multiplier for optimiser step ``step`` (0-based): linear warm-up, then constant or cosine
    decay to ``min_ratio`` at ``total`` (SGDR's cosine, Loshchilov & Hutter 2017, without restarts)."""
    check_choice("LR schedule", schedule, ("constant", "cosine"))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def config_changes(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = _flat(config_to_dict(old)), _flat(config_to_dict(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def _world_size_from_env() -> int:
    return max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))


class Trainer:
    """Set up a run (fresh or resumed) in ``__init__``; :meth:`fit` trains it and returns the run dir."""

    def __init__(self, config: Config, out_dir: str | os.PathLike[str], *, resume: bool = False,
                 metrics: MetricsHook | None = None, progress: bool = True):
        from accelerate import Accelerator

        self.config, self.out, self.metrics, self.progress = config, Path(out_dir), metrics, progress
        c, tc = config, config.train
        cpu = tc.device == "cpu" or (not torch.cuda.is_available() and _world_size_from_env() > 1)
        self.acc = acc = Accelerator(cpu=cpu, gradient_accumulation_steps=tc.grad_accum)
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        self.chunk = tc.batch_size // tc.grad_accum  # one global micro-batch
        if self.chunk % self.world:
            raise ValueError(f"train.batch_size / train.grad_accum = {self.chunk} must be divisible by the "
                             f"number of processes ({self.world})")
        self.micro = self.chunk // self.world

        ckpt = latest_checkpoint(self.out / CHECKPOINTS)
        if ckpt is not None and not resume:
            raise FileExistsError(f"{self.out} already holds checkpoints (latest: {ckpt.name}); resume it "
                                  f"(--resume) or choose another output directory")
        if ckpt is not None:
            old = load_config(self.out / RUN_CONFIG)
            changed = [k for k in config_changes(old, c) if not k.startswith(RESUMABLE_CHANGES)]
            if changed:
                raise ValueError(f"cannot resume {self.out}: the config differs from the run's in "
                                 f"{', '.join(changed)} (only {', '.join(RESUMABLE_CHANGES)}* may change)")

        self.dataset = build_dataset(c)
        self.autoencoder = None
        if c.latent.autoencoder is not None:  # latent diffusion: the data are the autoencoder's latents
            with acc.main_process_first():  # the main process fills the disk cache; the others read it
                self.dataset = latent_dataset(c, self.dataset, device=acc.device, progress=progress and self.main)
            self.autoencoder = self.dataset.autoencoder
        self.image_shape, self.num_classes = self._check_data()
        self.condition = CONDITIONS[c.condition.kind](c.condition_options(), dropout=c.condition.dropout,
                                                      num_classes=self.num_classes, image_shape=self.image_shape)
        net = build_model(c).to(acc.device)
        self.ema = EMA(net, c.ema.kind, c.ema.decay, c.ema.sigma_rel)
        self._check_model()
        o = c.optim
        opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
            s, warmup=o.warmup_steps, total=tc.steps, schedule=o.schedule, min_ratio=o.min_lr_ratio))
        self.net, self.opt = acc.prepare(net, opt)
        self.raw_net = acc.unwrap_model(self.net)
        self.denoiser = build_denoiser(c, self.net)
        self.step, self.nan_total, self.nan_streak = 0, 0, 0
        rng_state = self._load(ckpt) if ckpt is not None else None

        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_stale(self.out / CHECKPOINTS)
            save_config(c, self.out / RUN_CONFIG)
        self.log = RunLog(self.out, self.step, resumed=ckpt is not None) if self.main else None
        epochs = callable(getattr(self.dataset, "set_epoch", None))
        sampler = StreamSampler(len(self.dataset), tc.seed, self.step * tc.batch_size, self.chunk, self.rank,
                                self.world, with_epoch=epochs)
        loader_gen = torch.Generator().manual_seed(int(stream_seeds(tc.seed, _LOADER, self.rank)[0]))
        self.batches = iter(DataLoader(EpochIndexed(self.dataset) if epochs else self.dataset,
                                       batch_size=self.micro, sampler=sampler,
                                       num_workers=c.data.num_workers, generator=loader_gen,
                                       collate_fn=functools.partial(collate, fields=self.condition.fields),
                                       pin_memory=acc.device.type == "cuda"))
        if rng_state is not None:  # last: nothing above may move the global RNGs after this
            restore_rng(rng_state)
        else:
            torch.manual_seed(tc.seed + self.rank)
            np.random.seed((tc.seed + self.rank) % 2**32)
            random.seed(tc.seed + self.rank)
        acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------------ setup

    def _check_data(self) -> tuple[tuple[int, ...], int | None]:
        c = self.config
        if len(self.dataset) < 1:
            raise ValueError(f"dataset {c.data.name!r} is empty")
        item = self.dataset[0]
        if not isinstance(item, Mapping) or not isinstance(item.get("image"), Tensor):
            raise ValueError(f"dataset {c.data.name!r} must yield dicts with an 'image' tensor, got {type(item).__name__}"
                             + (f" with keys {sorted(item)}" if isinstance(item, Mapping) else ""))
        for needs in CONDITIONS[c.condition.kind].fields:
            if not isinstance(item.get(needs), (int, str, Tensor, np.integer)):
                raise ValueError(f"condition.kind is {c.condition.kind!r} but dataset {c.data.name!r} yields no "
                                 f"{needs!r} (its items have {', '.join(sorted(item))})")
        classes = getattr(self.dataset, "classes", None)
        if c.condition.kind == "class" and classes is not None and len(classes) > (c.num_classes or 0):
            raise ValueError(f"dataset {c.data.name!r} has {len(classes)} classes but model.num_classes is "
                             f"{c.num_classes}")
        return tuple(item["image"].shape), c.num_classes

    def _check_model(self) -> None:
        """One forward pass on a real image, so a shape or class mismatch fails now and says why."""
        c = self.config
        if c.condition.kind == "image":
            want, got = self.condition.conditioner.concat_channels, c.model.options.get("concat_channels", 0)
            if got != want:
                raise ValueError(f"model.concat_channels must be {want} for condition task "
                                 f"{c.condition_options().task!r} on {self.image_shape[0]}-channel images, got {got}")
        item = self.dataset[0]
        x = item["image"][None].float().to(self.acc.device)
        gens = [torch.Generator().manual_seed(0)]
        cond = self.condition.training(collate([item], self.condition.fields), gens, x.device)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                build_denoiser(self.config, self.ema.module)(x, torch.ones(1, dtype=torch.float64), cond)
        except (ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"model {self.config.model.name!r} cannot denoise the data's images of shape "
                             f"{tuple(x.shape[1:])} (cond {cond}): {e}") from None

    def _load(self, path: Path) -> dict[str, Any] | None:
        ck = load_checkpoint(path)
        st = ck["state"]
        if self.autoencoder is not None:
            check_latent_resume(path, st, self.dataset.record)
        load_weights(self.raw_net, ck["model"], str(path / "model.safetensors"))
        load_weights(self.ema.module, ck["ema"], str(path / "ema.safetensors"))
        try:
            self.ema.load_state_dict(st["ema"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
            position, nan = st["data"]["position"], st["nan"]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: cannot restore training state ({e!r})") from None
        self.step = ck["step"]
        if position != self.step * self.config.train.batch_size:
            raise ValueError(f"{path}: data position {position} is not step {self.step} x train.batch_size "
                             f"{self.config.train.batch_size}; the batch size cannot change on resume")
        if st["data"].get("dataset_len") != len(self.dataset):
            warnings.warn(f"resuming {path}: the dataset had {st['data'].get('dataset_len')} items, now "
                          f"{len(self.dataset)}; the data order will differ from an uninterrupted run")
        self.nan_total, self.nan_streak = nan["total"], nan["streak"]
        rngs = st.get("rng", [])
        if self.rank < len(rngs):
            return rngs[self.rank]
        warnings.warn(f"resuming {path} with {self.world} processes, saved with {len(rngs)}: "
                      f"process {self.rank} starts from fresh RNG states")
        return None

    # ------------------------------------------------------------------------------------------ loop

    def train_step(self) -> Tensor:
        """One optimiser step over ``grad_accum`` micro-batches; returns ``[loss, grad_norm]`` (global)."""
        tc, acc = self.config.train, self.acc
        seeds = stream_seeds(tc.seed, _NOISE, self.step, tc.batch_size)
        autocast = (torch.autocast(acc.device.type, dtype=torch.bfloat16) if tc.mixed_precision == "bf16"
                    else contextlib.nullcontext())
        total = torch.zeros((), device=acc.device)
        for m in range(tc.grad_accum):
            batch = next(self.batches)
            x0 = batch["image"].to(acc.device, torch.float32)
            first = m * self.chunk + self.rank * self.micro
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[first:first + len(x0)]]
            cond = self.condition.training(batch, gens, acc.device)
            with acc.accumulate(self.net):
                with autocast:
                    loss = self.config.loss(self.denoiser, x0, cond, gens).mean()
                acc.backward(loss)
            total += loss.detach().float()
        clip = self.config.optim.grad_clip
        norm = acc.clip_grad_norm_(self.net.parameters(), clip if clip > 0 else math.inf)
        stats = acc.reduce(torch.stack([total / tc.grad_accum, torch.as_tensor(norm, device=acc.device).float()]),
                           "mean")
        if bool(torch.isfinite(stats).all()):
            self.opt.step()
            self.ema.update(self.raw_net)
            self.nan_streak = 0
        else:
            self.nan_total, self.nan_streak = self.nan_total + 1, self.nan_streak + 1
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.sched.step()
        self.step += 1
        return stats

    def save(self) -> None:
        """Checkpoint the current step (collective: every process must call it)."""
        from accelerate.utils import gather_object

        rngs = gather_object([capture_rng()]) if self.world > 1 else [capture_rng()]
        if self.main:
            for name, p in self.raw_net.named_parameters():
                if not torch.isfinite(p).all():
                    raise TrainingDiverged(f"parameter {name!r} is NaN/inf at step {self.step}; not saving")
            tc = self.config.train
            state = {"scheduler": self.sched.state_dict(), "ema": self.ema.state_dict(),
                     "data": {"position": self.step * tc.batch_size, "dataset_len": len(self.dataset)},
                     "nan": {"total": self.nan_total, "streak": self.nan_streak}, "rng": rngs,
                     "world_size": self.world, "image_shape": list(self.image_shape),
                     "classes": [str(c) for c in getattr(self.dataset, "classes", None) or []]}
            if self.autoencoder is not None:
                state["latent"] = self.dataset.record
            save_checkpoint(self.out / CHECKPOINTS, self.step, model=self.raw_net.state_dict(),
                            ema=self.ema.module.state_dict(), optimizer=self.opt.state_dict(), state=state,
                            keep_last=tc.keep_last)
        self.acc.wait_for_everyone()

    def ema_denoiser(self) -> Denoiser:
        return build_denoiser(self.config, self.ema.module)

    def sample_grid(self) -> Path | None:
        """EMA samples to ``samples/step_*.png`` and ``samples.png``: one row per class (class models), per
        prompt (text models; ``sample.prompts`` or the first dataset captions), or rows of degraded input,
        sample and original (image-conditioned models)."""
        s = self.config.sample
        if s.n == 0 or not self.main:
            return None
        den: Any = self.ema_denoiser()
        kind, device = self.config.condition.kind, self.acc.device
        cond: Any = None
        n, nrow = s.n, math.ceil(math.sqrt(s.n))
        if kind == "class":
            assert self.num_classes is not None
            nrow = max(1, s.n // self.num_classes)
            n = nrow * self.num_classes
            cond = torch.arange(self.num_classes, device=device).repeat_interleave(nrow)
        elif kind == "text":
            prompts = list(s.prompts) or self._captions(max(1, round(math.sqrt(s.n))))
            nrow = max(1, s.n // len(prompts))
            n = nrow * len(prompts)
            cond = {"text": [p for p in prompts for _ in range(nrow)]}
        elif kind == "image":
            items = [self.dataset[i] for i in range(min(max(1, round(math.sqrt(s.n))), len(self.dataset)))]
            x0 = torch.stack([it["image"] for it in items]).float().to(device)
            n = nrow = len(x0)
            gens = seeded_generators(s.seed, n)
            cond = self.condition.conditioner.from_source(self.condition.conditioner.degrade(x0, gens), gens)
        if kind in ("class", "text") and s.cfg_scale != 1:
            den = ClassifierFreeGuidance(den, s.cfg_scale, self.num_classes)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            x = sample(den, (n, *self.image_shape), sampler=s.sampler, nfe=s.nfe, schedule=s.schedule, cond=cond,
                       generator=seeded_generators(s.seed, n), device=device)
            if self.autoencoder is not None:
                x = decode(self.autoencoder, x)
        if kind == "image":  # rows: what the model saw, what it made, the original
            x = torch.cat([self.condition.conditioner.shown(cond), x, x0])
        path = self.out / SAMPLES / f"step_{self.step:08d}.png"
        path.parent.mkdir(exist_ok=True)
        save_image_grid(x, path, nrow)
        save_image_grid(x, self.out / "samples.png", nrow)
        return path

    def _captions(self, count: int) -> list[str]:
        return [str(self.dataset[i]["caption"]) for i in range(min(count, len(self.dataset)))]

    def _evaluate(self) -> None:
        self.sample_grid()
        if self.metrics is not None and self.main:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                values = dict(self.metrics(self.ema_denoiser(), self.step))
            assert self.log is not None
            self.log.metrics(self.step, values)

    def fit(self, stop_at: int | None = None) -> Path:
        """Train to ``train.steps`` (or stop early, checkpointed, after step ``stop_at``); return the run dir."""
        from tqdm.auto import tqdm

        tc = self.config.train
        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and self.main))
        t0 = time.perf_counter()
        losses: list[float] = []
        logged_step, logged_time, saved_at, evaluated_at = self.step, t0, -1, -1
        try:
            while self.step < end:
                loss, norm = self.train_step().tolist()
                bar.update(1)
                if self.nan_streak:
                    self._report_nan(loss, norm, bar)
                else:
                    losses.append(loss)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.perf_counter()
                    mean = sum(losses) / len(losses) if losses else math.nan
                    ips = tc.batch_size * (self.step - logged_step) / max(now - logged_time, 1e-9)
                    if self.log is not None:
                        self.log.log({"step": self.step, "loss": mean, "lr": self.sched.get_last_lr()[0],
                                      "grad_norm": norm, "nan_skipped": self.nan_total, "images_per_s": ips,
                                      "elapsed_s": now - t0})
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}")
                    losses, logged_step, logged_time = [], self.step, now
                if tc.save_every and self.step % tc.save_every == 0:
                    self.save()
                    saved_at = self.step
                    if self.log is not None:
                        self.log.plot()
                if self.config.sample.every and self.step % self.config.sample.every == 0:
                    self._evaluate()
                    evaluated_at = self.step
            if saved_at != self.step:
                self.save()
            if evaluated_at != self.step:
                self._evaluate()
        finally:
            bar.close()
            if self.log is not None:
                self.log.plot()
                self.log.close()
        return self.out

    def _report_nan(self, loss: float, norm: float, bar: Any) -> None:
        tc = self.config.train
        if self.main:
            bar.write(f"step {self.step}: non-finite loss ({loss:.4g}) or gradient norm ({norm:.4g}); step skipped "
                      f"({self.nan_streak} in a row, {self.nan_total} in total)")
        if self.nan_streak >= tc.max_nan_steps:
            last = latest_checkpoint(self.out / CHECKPOINTS)
            raise TrainingDiverged(
                f"training stopped at step {self.step}: {self.nan_streak} consecutive steps "
                f"({self.step - self.nan_streak + 1}..{self.step}) had a NaN/inf loss or gradient norm "
                f"(train.max_nan_steps={tc.max_nan_steps}). The last good checkpoint is "
                f"{last if last is not None else 'none (none was written yet)'}; lower optim.lr or check the "
                f"data for NaN/inf.")


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
        config = Path(out_dir) / RUN_CONFIG
    if isinstance(config, Config):
        cfg = config_from_dict(apply_overrides(config_to_dict(config), overrides)) if overrides else config
    else:
        cfg = load_config(config, overrides)
    return Trainer(cfg, out_dir, resume=resume, metrics=metrics, progress=progress).fit()


def run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What sampling a run needs besides its config: ``step``, ``image_shape`` ``(C, H, W)`` (of the latents in
    a latent run), the dataset's class names ``classes`` (may be empty) and, for a latent run, ``latent`` (the
    autoencoder's :func:`~denoisekit.train.latent.latent_record`), from the latest checkpoint."""
    ckpt = latest_checkpoint(Path(run_dir) / CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(f"{Path(run_dir) / CHECKPOINTS}: no checkpoint")
    state = load_json(ckpt / STATE_FILE)
    try:
        return {"step": int(state["step"]), "image_shape": tuple(int(v) for v in state["image_shape"]),
                "classes": [str(c) for c in state.get("classes", [])],
                **({"latent": state["latent"]} if state.get("latent") else {})}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{ckpt / STATE_FILE}: malformed ({e!r})") from None


def load_run(run_dir: str | os.PathLike[str], *, weights: Literal["ema", "model"] = "ema",
             checkpoint: str | os.PathLike[str] | None = None) -> tuple[Denoiser, Config]:
    """The trained denoiser (EMA weights by default, eval mode, on CPU) and config of a run directory.
    A latent run's denoiser works on latents: decode its samples with ``load_latent_decoder(run_dir)``
    (:mod:`denoisekit.train.latent`).

    ``checkpoint`` picks a checkpoint directory (default: the latest). Missing files raise
    ``FileNotFoundError`` and corrupt ones ``ValueError``, naming the path. Nothing is unpickled.
    """
    check_choice("weights", weights, ("ema", "model"))
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    cfg_path = run / RUN_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing (is {str(run)!r} a denoisekit training run?)")
    config = load_config(cfg_path)
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run / CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(f"{run / CHECKPOINTS}: no checkpoint (did training stop before its first save?)")
    path = ckpt / f"{weights}.safetensors"
    net = build_model(config)
    load_weights(net, load_tensors(path), str(path))
    return build_denoiser(config, net).eval().requires_grad_(False), config
