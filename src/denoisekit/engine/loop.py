"""The training engine: one loop on Hugging Face ``accelerate`` for every recipe, one process or many.

``Engine(recipe, "runs/x").fit()`` writes a run directory::

    config.yaml               the resolved config (the recipe's; enough to rebuild everything)
    checkpoints/step_*/       safetensors weights (model, EMA, optimiser) + JSON state, the last train.keep_last kept
    log.csv, loss.png         step, the recipe's losses, lr, grad norm, skipped steps, images/s; the loss curve
    metrics.csv               values of the metrics hook (step, name, value)
    tb/                       TensorBoard events (when tensorboard is installed)

What the recipe (:mod:`denoisekit.engine.recipe`) builds, trains and saves varies; this loop is the same for
all. It runs under ``accelerate launch --multi_gpu --num_processes N`` (on CPUs too: each process then uses
gloo). ``train.batch_size`` is the global batch of one optimiser step, split into ``grad_accum``
micro-batches and each micro-batch over the processes. Every random draw of a step is a function of
``(train.seed, step, sample index in the global batch)``: the data order is an endless stream of seeded
per-epoch permutations and each sample gets its own generator. So 1 process and N see the same samples with
the same noise (only float reduction order differs), and a resumed run continues bit for bit: the checkpoint
holds the data position, optimisers, LR schedules, EMAs and every process's RNG states.

A step whose loss or gradient norm is NaN/inf (on any process) changes nothing (with alternating optimiser
phases, a GAN's: nothing from the failing phase on) and is counted;
``train.max_nan_steps`` of them in a row stop the run with :class:`~denoisekit.engine.optim.TrainingDiverged`
and leave the last checkpoint as it was. A run that depends on other runs (``init.from_run``,
``teacher.run``) records their hashes (:mod:`denoisekit.engine.lineage`) and refuses to resume when one changed.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from . import lineage
from .checkpoint import (OPTIM_FILE, STATE_FILE, capture_rng, check_rng, latest_checkpoint, list_checkpoints, load_checkpoint, recover,
                         restore_rng, save_checkpoint, set_aside)
from .ema import EMA
from .lock import LOCK_FILE, RunLock
from .optim import TrainingDiverged, build_adamw, joint_optimizer_state, load_optimizer_states
from .stopping import StopRequest, TrainingStopped, catch_stop_signals
from .stream import (DROPOUT_STREAM, LOADER_STREAM, NOISE_STREAM, EpochIndexed, StreamSampler, sample_randomness,
                     stream_seeds)
from .recipe import Recipe
from .runlog import RunLog

RUN_CONFIG, CHECKPOINTS = lineage.RUN_CONFIG, lineage.CHECKPOINTS
#: A parameter larger than this in magnitude is not a trained network: such weights are never checkpointed.
MAX_WEIGHT = 1e8


class CorruptCheckpoint(ValueError):
    """A checkpoint's files cannot be read or do not describe a state this run can continue from."""
#: ``metrics(engine) -> {name: value}``, called where the recipe previews (main process only).
MetricsHook = Callable[["Engine"], Mapping[str, float]]


def _world_size_from_env() -> int:
    return max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def dict_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


class Engine:
    """Set up a run of ``recipe`` (fresh or resumed) in ``__init__``; :meth:`fit` trains it and returns the run dir."""

    def __init__(self, recipe: Recipe, out_dir: str | os.PathLike[str], *, resume: bool = False,
                 progress: bool = True, metrics: MetricsHook | None = None):
        from accelerate import Accelerator

        self.recipe, self.out, self.progress, self.metrics = recipe, Path(out_dir), progress, metrics
        tc = recipe.config.train
        cpu = tc.device == "cpu" or (not torch.cuda.is_available() and _world_size_from_env() > 1)
        self.acc = acc = Accelerator(cpu=cpu, gradient_accumulation_steps=tc.grad_accum)
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        self.chunk = tc.batch_size // tc.grad_accum  # one global micro-batch
        if self.chunk % self.world:
            raise ValueError(f"train.batch_size / train.grad_accum = {self.chunk} must be divisible by the "
                             f"number of processes ({self.world})")
        self.micro = self.chunk // self.world

        self.lock: RunLock | None = None
        created = [d for d in (self.out, *self.out.parents) if not d.exists()]  # made here, deepest first
        if self.main:  # the one writer: lock first, then finish any interrupted checkpoint swap
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.out)
        try:
            self._open(resume)
        except BaseException:
            self.close()
            if created and self.main:  # a run that could not start leaves nothing behind
                (self.out / LOCK_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    for d in created:
                        d.rmdir()
            raise

    def _open(self, resume: bool) -> None:
        recipe, acc = self.recipe, self.acc
        c, tc = recipe.config, recipe.config.train
        if self.main:
            for line in recover(self.out / CHECKPOINTS):
                warnings.warn(f"{self.out}: restored the checkpoint of an interrupted save ({line})")
        acc.wait_for_everyone()
        ckpt = latest_checkpoint(self.out / CHECKPOINTS)
        if ckpt is not None and not resume:
            raise FileExistsError(f"{self.out} already holds checkpoints (latest: {ckpt.name}); resume it "
                                  f"(--resume) or choose another output directory")
        if ckpt is not None:
            old = recipe.config_from_file(self.out / RUN_CONFIG)
            changed = [k for k in dict_changes(old, recipe.config_to_dict()) if not k.startswith(recipe.resumable)]
            if changed:
                raise ValueError(f"cannot resume {self.out}: the run's config differs from this config in "
                                 f"{', '.join(changed)} (only {', '.join(recipe.resumable)}* may change)")
        self.depends = [lineage.record(d.role, d.run, d.weights, d.key) for d in recipe.dependencies()]

        self.dataset = recipe.build_dataset()
        recipe.check_data(self.dataset)
        recipe.modules = {k: m.to(acc.device) for k, m in recipe.build(self).items()}
        self.emas = {e.name: EMA(recipe.modules[e.name], e.kind, e.decay, e.sigma_rel) for e in recipe.ema()}
        recipe.check_model(self)
        specs = recipe.optimizers()
        opts, self.scheds = zip(*[build_adamw(s.params, s.optim, tc.steps) for s in specs]) if specs else ((), ())
        self.clip = [(list(s.clip if s.clip is not None else _params(s.params)), s.optim.grad_clip) for s in specs]
        #: The optimiser update phases of one step, in order (one unless the recipe alternates, like a GAN).
        self.opt_phases = [s.phase for s in specs]
        self.phases, self.phase = sorted(set(self.opt_phases)) or [0], 0
        names = recipe.trained()
        prepared = acc.prepare(*[recipe.modules[k] for k in names], *opts)
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        recipe.wrapped = dict(zip(names, prepared[:len(names)]))
        self.opts = list(prepared[len(names):])
        self.step, self.nan_total, self.nan_streak, self.elapsed = 0, 0, 0, 0.0
        if ckpt is not None:
            self._check_schedule_length(old, specs)
        rng_state = self._resume() if ckpt is not None else None
        #: The step the run directory's latest checkpoint already holds (nothing to save there again).
        self.saved_step = self.step if ckpt is not None else -1

        if self.main:
            recipe.save_config(self.out / RUN_CONFIG)
        fields = ("step", *recipe.stats, "lr", "grad_norm", "nan_skipped", "images_per_s", "elapsed_s")
        self.log = RunLog(self.out, self.step, resumed=ckpt is not None, fields=fields) if self.main else None
        epochs = callable(getattr(self.dataset, "set_epoch", None))
        sampler = StreamSampler(len(self.dataset), tc.seed, self.step * tc.batch_size, self.chunk, self.rank,
                                self.world, with_epoch=epochs)
        loader_gen = torch.Generator().manual_seed(int(stream_seeds(tc.seed, LOADER_STREAM, self.rank)[0]))
        self.batches = iter(DataLoader(EpochIndexed(self.dataset) if epochs else self.dataset,
                                       batch_size=self.micro, sampler=sampler,
                                       num_workers=c.data.num_workers, generator=loader_gen,
                                       collate_fn=recipe.collate, pin_memory=acc.device.type == "cuda"))
        if rng_state is not None:  # last: nothing above may move the global RNGs after this
            restore_rng(rng_state)
        else:
            torch.manual_seed(tc.seed + self.rank)
            np.random.seed((tc.seed + self.rank) % 2**32)
            random.seed(tc.seed + self.rank)
        acc.wait_for_everyone()

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def ema_module(self, name: str) -> Any:
        """The averaged copy of module ``name`` (the module itself when it keeps no EMA)."""
        return self.emas[name].module if name in self.emas else self.recipe.modules[name]

    # ------------------------------------------------------------------------------------------ checkpoints

    def _ema_weights(self) -> dict[str, Tensor]:
        saved = {n: self.recipe.saved(n, e.module.state_dict()) for n, e in self.emas.items()}
        if len(saved) == 1:
            return next(iter(saved.values()))
        return {f"{n}.{k}": v for n, part in saved.items() for k, v in part.items()}

    def _load_ema_weights(self, tensors: Mapping[str, Tensor], source: str) -> None:
        for n, e in self.emas.items():
            part = tensors if len(self.emas) == 1 else {k[len(n) + 1:]: v for k, v in tensors.items()
                                                         if k.startswith(n + ".")}
            self.recipe.load_module(n, e.module, part, source if len(self.emas) == 1 else f"{source} ({n})")

    def _check_schedule_length(self, old: Mapping[str, Any], specs: Any) -> None:
        """``train.steps`` may change on resume only where no learning-rate curve depends on it."""
        before, now = old.get("train", {}).get("steps"), self.recipe.config.train.steps
        decaying = sorted({s.optim.schedule for s in specs} - {"constant"})
        if before != now and decaying:
            raise ValueError(f"cannot resume {self.out} with train.steps {now}: it was trained with train.steps "
                             f"{before} and optim.schedule {decaying[0]}, whose decay is planned over those steps "
                             f"(a new length would change the learning rate of every step). Keep train.steps: "
                             f"{before}, or start a new run from this one (init.from_run: {self.out})")

    def _resume(self) -> dict[str, Any] | None:
        """Load the newest checkpoint that is intact; the unreadable ones above it are set aside with a warning."""
        bad: list[tuple[Path, str]] = []
        for _, path in reversed(list_checkpoints(self.out / CHECKPOINTS)):
            try:
                rng = self._load(path)
            except CorruptCheckpoint as e:
                bad.append((path, str(e)))
                continue
            for p, why in bad:
                kept = set_aside(p).name if self.main else f"{p.name}.corrupt"
                warnings.warn(f"checkpoint {p} is unreadable ({why}); resumed from the newest intact one, "
                              f"{path.name}; the bad one is kept as {kept}")
            return rng
        raise ValueError(f"cannot resume {self.out}: no checkpoint can be loaded ("
                         + "; ".join(f"{p.name}: {why}" for p, why in bad) + ")")

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            ck = load_checkpoint(path)
        except (ValueError, FileNotFoundError) as e:
            raise CorruptCheckpoint(str(e)) from None
        st = ck["state"]
        recorded = st.get("depends", [])
        differs = lineage.same(recorded, self.depends)
        if differs:
            raise ValueError(f"cannot resume {self.out}: its {differs}")
        lineage.check(recorded, f"cannot resume {self.out}")
        try:
            return self._restore(path, ck)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            msg = f"{path / STATE_FILE}: missing key {e}" if isinstance(e, KeyError) else str(e)
            raise CorruptCheckpoint(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None

    def _restore(self, path: Path, ck: dict[str, Any]) -> dict[str, Any] | None:
        st = ck["state"]
        for i, r in enumerate(st.get("rng", [])):
            check_rng(r, f"{path / STATE_FILE} (rng[{i}])")
        self.recipe.load_state(st, str(path))
        self.recipe.load_weights(ck["model"], str(path / "model.safetensors"))
        self._load_ema_weights(ck["ema"], str(path / "ema.safetensors"))
        self.recipe.load_extra_tensors(ck.get("extra", {}), str(path / "recipe.safetensors"))
        emas = st.get("ema", {})
        if len(self.emas) == 1:
            next(iter(self.emas.values())).load_state_dict(emas)
        else:
            for n, e in self.emas.items():
                e.load_state_dict(emas[n])
        load_optimizer_states(self.opts, ck["optimizer"], str(path / OPTIM_FILE))
        scheds = [st["scheduler"]] if len(self.scheds) == 1 else st["scheduler"]
        for s, sd in zip(self.scheds, scheds, strict=True):
            if not isinstance(sd, Mapping) or not isinstance(sd.get("last_epoch"), int):
                raise ValueError(f"{path / STATE_FILE}: 'scheduler' is not a learning-rate schedule state")
            s.load_state_dict(sd)
        position, nan = st["data"]["position"], st["nan"]
        self.nan_total, self.nan_streak = int(nan["total"]), int(nan["streak"])
        self.elapsed = float(st.get("elapsed_s", 0.0))
        self.step = ck["step"]
        bs = self.recipe.config.train.batch_size
        if position != self.step * bs:
            raise ValueError(f"{path}: data position {position} is not step {self.step} x train.batch_size "
                             f"{bs}; the batch size cannot change on resume")
        if st["data"].get("dataset_len") != len(self.dataset):
            warnings.warn(f"resuming {path}: the dataset had {st['data'].get('dataset_len')} items, now "
                          f"{len(self.dataset)}; the data order will differ from an uninterrupted run")
        rngs = st.get("rng", [])
        if self.rank < len(rngs):
            return rngs[self.rank]
        warnings.warn(f"resuming {path} with {self.world} processes, saved with {len(rngs)}: "
                      f"process {self.rank} starts from fresh RNG states")
        return None

    def save(self) -> None:
        """Checkpoint the current step (collective: every process must call it)."""
        from accelerate.utils import gather_object

        rngs = gather_object([capture_rng()]) if self.world > 1 else [capture_rng()]
        if self.main:
            model = self.recipe.weights()
            for name, p in model.items():
                if p.is_floating_point() and not torch.isfinite(p).all():
                    raise TrainingDiverged(f"parameter {name!r} is NaN/inf at step {self.step}; not saving")
                if p.is_floating_point() and p.numel() and (big := float(p.abs().max())) > MAX_WEIGHT:
                    raise TrainingDiverged(f"parameter {name!r} reached magnitude {big:.3g} at step {self.step} "
                                           f"(more than {MAX_WEIGHT:.0e}: the run diverged); not saving. The last "
                                           f"good checkpoint is {latest_checkpoint(self.out / CHECKPOINTS)}")
            tc = self.recipe.config.train
            ema_state: Any = ({n: e.state_dict() for n, e in self.emas.items()} if len(self.emas) != 1
                              else next(iter(self.emas.values())).state_dict())
            scheds: Any = self.scheds[0].state_dict() if len(self.scheds) == 1 else [s.state_dict() for s in self.scheds]
            optim = self.opts[0].state_dict() if len(self.opts) == 1 else joint_optimizer_state(self.opts)
            state = {"recipe": self.recipe.name, "scheduler": scheds, "ema": ema_state,
                     "data": {"position": self.step * tc.batch_size, "dataset_len": len(self.dataset)},
                     "nan": {"total": self.nan_total, "streak": self.nan_streak}, "rng": rngs,
                     "world_size": self.world, "elapsed_s": self.elapsed, "depends": self.depends,
                     **self.recipe.state()}
            save_checkpoint(self.out / CHECKPOINTS, self.step, model=model, ema=self._ema_weights(),
                            optimizer=optim, state=state, keep_last=tc.keep_last,
                            extra=self.recipe.extra_tensors())
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------------ the loop

    def step_generators(self, micro_index: int, count: int, stream: int = NOISE_STREAM) -> list[torch.Generator]:
        """One generator per sample of micro-batch ``micro_index`` of this step on this process (the recipe's
        noise stream; network dropout has its own, so that it never shifts the recipe's draws)."""
        tc = self.recipe.config.train
        seeds = stream_seeds(tc.seed, stream, self.step, tc.batch_size)
        first = micro_index * self.chunk + self.rank * self.micro
        return [torch.Generator().manual_seed(int(s)) for s in seeds[first:first + count]]

    def backward(self, loss: Tensor) -> None:
        self.acc.backward(loss)

    def train_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns the global mean stats and grad norm.

        With several optimiser phases (:attr:`OptimizerSpec.phase <denoisekit.engine.recipe.OptimizerSpec>`:
        alternating updates, e.g. a GAN's discriminator, then its generator against the updated discriminator)
        the recipe's ``step`` sees the same micro-batches with the same per-sample generators once per phase,
        ``self.phase`` telling which; after each phase its optimisers step and every gradient is cleared (what
        a phase's loss left on other phases' parameters is not theirs). A non-finite phase skips its update
        and the phases after it; the stats of all phases are summed per key."""
        tc, acc, recipe = self.recipe.config.train, self.acc, self.recipe
        autocast = (torch.autocast(acc.device.type, dtype=torch.bfloat16) if tc.mixed_precision == "bf16"
                    else contextlib.nullcontext())
        wrapped = list(recipe.wrapped.values())
        batches = [next(self.batches) for _ in range(tc.grad_accum)]
        totals: dict[str, Tensor] = {}
        norms: list[Tensor] = []
        finite = True
        for phase in self.phases:
            self.phase = phase
            part: dict[str, Tensor] = {}
            for m, batch in enumerate(batches):
                gens = self.step_generators(m, _batch_len(batch))
                with acc.accumulate(*wrapped), sample_randomness(self.step_generators(m, len(gens), DROPOUT_STREAM)):
                    with autocast:
                        stats = recipe.step(batch, gens, self)
                    if stats["loss"].requires_grad:
                        acc.backward(stats["loss"])
                for k, v in stats.items():
                    part[k] = part.get(k, 0) + v.detach().float()
            mine = [i for i, p in enumerate(self.opt_phases) if p == phase]
            clipped = [acc.clip_grad_norm_(params, clip if clip > 0 else math.inf)
                       for params, clip in (self.clip[i] for i in mine) if params]
            norm = torch.stack([torch.as_tensor(n, device=acc.device).float() for n in clipped]).norm() if clipped \
                else torch.zeros((), device=acc.device)
            keys = list(part)
            values = acc.reduce(torch.stack([part[k] / tc.grad_accum for k in keys] + [norm]), "mean")
            finite = bool(torch.isfinite(values).all())
            if finite:
                for i in mine:
                    self.opts[i].step()
            for opt in self.opts:
                opt.zero_grad(set_to_none=True)
            for k, v in zip(keys, values[:-1]):
                totals[k] = totals[k] + v if k in totals else v
            norms.append(values[-1])
            if not finite:
                break
        self.phase = 0
        if finite:
            for name, ema in self.emas.items():
                ema.update(recipe.modules[name])
            recipe.after_update(self)
            self.nan_streak = 0
        else:
            self.nan_total, self.nan_streak = self.nan_total + 1, self.nan_streak + 1
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for s in self.scheds:
                s.step()
        self.step += 1
        out = {k: float(v) for k, v in totals.items()}
        out["grad_norm"] = float(norms[0] if len(norms) == 1 else torch.stack(norms).norm())
        return out

    def evaluate(self) -> None:
        """The recipe's preview and the metrics hook (main process)."""
        if not self.main:
            return
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            self.recipe.preview(self)
            if self.metrics is not None:
                values = dict(self.metrics(self))
                assert self.log is not None
                self.log.metrics(self.step, values)

    def fit(self, stop_at: int | None = None) -> Path:
        """Train to ``train.steps`` (or stop early, checkpointed, after step ``stop_at``); return the run dir.

        SIGTERM or Ctrl-C finishes the step in progress, checkpoints it and raises
        :class:`~denoisekit.engine.stopping.TrainingStopped` (:mod:`denoisekit.engine.stopping`)."""
        from tqdm.auto import tqdm

        recipe, tc = self.recipe, self.recipe.config.train
        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        bar = tqdm(total=tc.steps, initial=self.step, desc=recipe.name, dynamic_ncols=True,
                   disable=not (self.progress and self.main))
        if self.step >= end and self.main and self.progress:
            bar.write(f"{self.out} is already at step {self.step} of {tc.steps}: nothing to train")
        try:
            with catch_stop_signals() as stop:
                self._loop(end, bar, stop)
            if stop.signum is not None:
                raise TrainingStopped(f"stopped by {stop.name} at step {self.step} of {tc.steps}; its checkpoint is "
                                      f"saved ({self.out / CHECKPOINTS / f'step_{self.step:08d}'}); continue with "
                                      f"--resume", stop.signum)
            if self.step >= tc.steps and self.main:
                recipe.finish(self)
        finally:
            bar.close()
            if self.log is not None:
                self.log.plot()
                self.log.close()
            self.close()
        self.acc.wait_for_everyone()
        return self.out

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any process was asked to stop (collective with several processes, so all stop together)."""
        flag = stop.signum is not None
        if self.world > 1:
            flag = bool(self.acc.reduce(torch.tensor(float(flag), device=self.device), "sum") > 0)
            if flag and stop.signum is None:
                stop.signum = signal.SIGTERM
        return flag

    def _loop(self, end: int, bar: Any, stop: StopRequest) -> None:
        """Steps up to ``end`` (fewer when a stop is requested), logging, saving and previewing on schedule;
        the last step reached is always checkpointed and previewed."""
        recipe, tc = self.recipe, self.recipe.config.train
        every = recipe.preview_every()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        count, logged_step, logged_time, saved_at, evaluated_at = 0, self.step, t0, self.saved_step, -1
        while self.step < end and not self._stop_requested(stop):
            t_step = time.perf_counter()
            stats = self.train_step()
            self.elapsed += time.perf_counter() - t_step
            bar.update(1)
            if self.nan_streak:
                self._report_nan(stats, bar)
            else:
                count += 1
                for k in recipe.stats:
                    sums[k] = sums.get(k, 0.0) + stats.get(k, math.nan)
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                now = time.perf_counter()
                means = {k: sums[k] / count if count else math.nan for k in recipe.stats}
                ips = tc.batch_size * (self.step - logged_step) / max(now - logged_time, 1e-9)
                if self.log is not None:
                    self.log.log({"step": self.step, **means, "lr": self.scheds[0].get_last_lr()[0],
                                  "grad_norm": stats["grad_norm"], "nan_skipped": self.nan_total,
                                  "images_per_s": ips, "elapsed_s": self.elapsed})
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:3]} | {"img_s": f"{ips:.0f}"})
                sums, count, logged_step, logged_time = {}, 0, self.step, now
            if tc.save_every and self.step % tc.save_every == 0:
                self.save()
                saved_at = self.step
                if self.log is not None:
                    self.log.plot()
            if every and self.step % every == 0 and stop.signum is None:
                self.evaluate()
                evaluated_at = self.step
        if saved_at != self.step:
            self.save()
        if evaluated_at != self.step and stop.signum is None:
            self.evaluate()

    def close(self) -> None:
        """Release the run directory (its lock); :meth:`fit` does this when it ends, however it ends."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _report_nan(self, stats: Mapping[str, float], bar: Any) -> None:
        tc = self.recipe.config.train
        if self.main:
            bar.write(f"step {self.step}: non-finite loss ({stats.get('loss', math.nan):.4g}) or gradient norm "
                      f"({stats['grad_norm']:.4g}); step skipped ({self.nan_streak} in a row, {self.nan_total} in total)")
        if self.nan_streak >= tc.max_nan_steps:
            last = latest_checkpoint(self.out / CHECKPOINTS)
            raise TrainingDiverged(
                f"training stopped at step {self.step}: {self.nan_streak} consecutive steps "
                f"({self.step - self.nan_streak + 1}..{self.step}) had a NaN/inf loss or gradient norm "
                f"(train.max_nan_steps={tc.max_nan_steps}). The last good checkpoint is "
                f"{last if last is not None else 'none (none was written yet)'}; lower optim.lr or check the "
                f"data for NaN/inf.")


def _params(params: Any) -> list[Any]:
    out = []
    for p in params:
        out.extend(p["params"] if isinstance(p, Mapping) else [p])
    return out


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Mapping):
        return len(next(iter(batch.values())))
    return len(batch)
