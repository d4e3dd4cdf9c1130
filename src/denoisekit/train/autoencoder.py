"""Training the latent-diffusion autoencoder: reconstruction + KL + adaptive-weighted PatchGAN loss.

The objective of Rombach et al. 2022 (App. G) with the GAN term of Esser et al. 2021 (Sec. 3.1), per image::

    L_AE = ||x - Dec(z)||_p  +  kl_weight * KL(q(z|x) || N(0, I))  +  lambda * disc_weight * L_G   (p = 1 or 2)
    L_D  = hinge loss of the PatchGAN on x (real) and Dec(z) (fake)

``||.||_p`` and the KL are *sums* over pixels / latent elements (LDM's convention, so their
``kl_weight = 1e-6`` means the same here), averaged over the batch. ``lambda`` is the adaptive weight
(eq. 7); ``L_G`` and ``L_D`` are off before ``loss.disc_start`` steps. No perceptual (LPIPS) term: it
needs pretrained VGG weights, which this library does not download. z is a reparameterised posterior
sample whose noise is a function of ``(train.seed, step, sample index)``, and the data order is the
seeded stream of :mod:`denoisekit.train.data_stream`, so a resumed run continues bit for bit.

``train_autoencoder(config, "runs/ae")`` writes::

    config.yaml                           the resolved config (sections: see :class:`AutoencoderTrainConfig`)
    checkpoints/step_*/                   model.safetensors (``autoencoder.*`` and ``discriminator.*``),
                                          optimizer.safetensors, state.json (data position, RNG states)
    log.csv, loss.png                     rec, kl, g_loss, d_loss, adaptive weight per logged step
    autoencoder.safetensors, .json        the final autoencoder with its latent scale: :func:`load_autoencoder`
    metrics.json, reconstructions.png     held-out PSNR and rFID (:func:`evaluate_autoencoder`)

Held-out images (:func:`~denoisekit.train.autoencoder_config.split_datasets`): a dataset with a
``split`` option (digits) uses its ``test`` split; a procedural one with ``length`` and ``seed``
(shapes) the items after the training ones; any other gives up its last ``eval.held_out`` items. The
rFID feature networks (no download: the digits classifier, a shapes attribute classifier, or
Inception-v3 from ``eval.inception``) and ``rfid_floor`` (the same distance between the held-out
images and as many training images: what "as good as a fresh sample" scores) are described in
:mod:`denoisekit.train.autoencoder_eval`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from ..config import _plain
from ..models.autoencoder import Autoencoder, AutoencoderConfig, compute_latent_scale
from ..models.discriminator import PatchDiscriminator, adaptive_weight, disc_factor, hinge_d_loss, hinge_g_loss
from .autoencoder_config import SECTIONS, AutoencoderTrainConfig, load_autoencoder_config, split_datasets
from .autoencoder_eval import evaluate_autoencoder, reconstruct, rfid_feature_network, stack_images
from .checkpoint import (capture_rng, clean_stale, latest_checkpoint, load_checkpoint, load_json_format, load_tensors,
                         load_weights, restore_rng, save_checkpoint, save_tensors, write_atomic, write_text_atomic)
from .data_stream import _LOADER, _NOISE, EpochIndexed, StreamSampler, stream_seeds
from .runlog import RunLog, save_image_grid
from .trainer import TrainingDiverged, lr_factor

FORMAT = "denoisekit.autoencoder/1"
RUN_CONFIG, CHECKPOINTS = "config.yaml", "checkpoints"
WEIGHTS, META, METRICS = "autoencoder.safetensors", "autoencoder.json", "metrics.json"
#: Keys that may change when resuming (they do not alter the trained weights).
RESUMABLE = ("train.steps", "train.log_every", "train.save_every", "train.keep_last", "train.max_nan_steps",
             "data.num_workers", "eval.")


# ------------------------------------------------------------------------------------------------ files

def save_autoencoder(ae: Autoencoder, directory: str | os.PathLike[str], **info: Any) -> Path:
    """Write ``autoencoder.safetensors`` (weights, latent scale and shift) and ``autoencoder.json``, atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "config": _plain(dataclasses.asdict(ae.config)),
            "scale_factor": float(ae.scale_factor), "shift": float(ae.shift), **info}
    write_atomic(d / WEIGHTS, lambda p: save_tensors(p, ae.state_dict(), {"format": FORMAT}))
    write_text_atomic(d / META, json.dumps(meta, indent=1) + "\n")
    return d


def load_autoencoder(path: str | os.PathLike[str]) -> Autoencoder:
    """The autoencoder of a finished run directory (or its ``autoencoder.json``), eval mode, on CPU.

    Missing files raise ``FileNotFoundError`` and corrupt ones ``ValueError``, naming the path; weights are
    safetensors, so nothing is unpickled."""
    p = Path(path)
    if p.is_file() and p.name == META:
        p = p.parent
    if not p.is_dir():
        raise FileNotFoundError(f"autoencoder directory {str(p)!r} does not exist")
    if not (p / META).is_file():
        hint = " (training has not finished: the run has checkpoints only)" if (p / CHECKPOINTS).is_dir() else ""
        raise FileNotFoundError(f"{p / META}: missing{hint}")
    meta = load_json_format(p / META, FORMAT)
    try:
        ae = Autoencoder(AutoencoderConfig(**meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p / META}: bad model config ({e})") from None
    load_weights(ae, load_tensors(p / WEIGHTS), str(p / WEIGHTS))
    return ae.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ training

class AutoencoderLog(RunLog):
    FIELDS = ("step", "loss", "rec", "kl", "g_loss", "d_loss", "gan_weight", "images_per_s", "elapsed_s")


def _seeded(build: Any, seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class AutoencoderTrainer:
    """Set up a run (fresh or resumed) in ``__init__``; :meth:`fit` trains it, then :meth:`finish` scales,
    exports and evaluates. The same code runs under ``accelerate launch`` (each process takes its share of
    every batch; only the main process writes)."""

    STATS = ("loss", "rec", "kl", "g_loss", "d_loss", "gan_weight")

    def __init__(self, config: AutoencoderTrainConfig, out_dir: str | os.PathLike[str], *, resume: bool = False,
                 progress: bool = True):
        from accelerate import Accelerator

        self.config, self.out, self.progress = config, Path(out_dir), progress
        c, tc = config, config.train
        self.acc = acc = Accelerator(cpu=tc.device == "cpu")
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        if tc.batch_size % self.world:
            raise ValueError(f"train.batch_size {tc.batch_size} must be divisible by the {self.world} processes")
        self.micro = tc.batch_size // self.world
        ckpt = latest_checkpoint(self.out / CHECKPOINTS)
        if ckpt is not None and not resume:
            raise FileExistsError(f"{self.out} already holds checkpoints (latest: {ckpt.name}); resume it or "
                                  "choose another output directory")
        if ckpt is not None:
            old = load_autoencoder_config(self.out / RUN_CONFIG).to_dict()
            new = config.to_dict()
            changed = [f"{s}.{k}" for s in SECTIONS for k in old[s].keys() | new[s].keys()
                       if old[s].get(k) != new[s].get(k) and not f"{s}.{k}".startswith(RESUMABLE)]
            if changed:
                raise ValueError(f"cannot resume {self.out}: the config differs in {', '.join(sorted(changed))} "
                                 f"(only {', '.join(RESUMABLE)}* may change)")

        self.dataset, self.n_train, self.held_out = split_datasets(c.data, c.eval.held_out)
        self.image_shape = self._check_data()
        ae = _seeded(lambda: Autoencoder(c.model), tc.seed).to(acc.device)
        disc = _seeded(lambda: PatchDiscriminator(c.discriminator), tc.seed + 1).to(acc.device)
        o = c.optim
        opt = torch.optim.AdamW([{"params": list(ae.parameters()), "lr": o.lr},
                                 {"params": list(disc.parameters()), "lr": o.disc_lr or o.lr}],
                                betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
            s, warmup=o.warmup_steps, total=tc.steps, schedule=o.schedule, min_ratio=o.min_lr_ratio))
        self.ae, self.disc, self.opt = acc.prepare(ae, disc, opt)
        self.raw_ae, self.raw_disc = acc.unwrap_model(self.ae), acc.unwrap_model(self.disc)
        self.step, self.nan_total, self.nan_streak, self.elapsed = 0, 0, 0, 0.0
        rng_state = self._load(ckpt) if ckpt is not None else None

        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_stale(self.out / CHECKPOINTS)
            write_text_atomic(self.out / RUN_CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.log = AutoencoderLog(self.out, self.step, resumed=ckpt is not None) if self.main else None
        epochs = callable(getattr(self.dataset, "set_epoch", None))
        sampler = StreamSampler(self.n_train, tc.seed, self.step * tc.batch_size, tc.batch_size, self.rank,
                                self.world, with_epoch=epochs)
        loader_gen = torch.Generator().manual_seed(int(stream_seeds(tc.seed, _LOADER, self.rank)[0]))
        self.batches = iter(DataLoader(EpochIndexed(self.dataset) if epochs else self.dataset, batch_size=self.micro,
                                       sampler=sampler, num_workers=c.data.num_workers, generator=loader_gen,
                                       collate_fn=stack_images))
        if rng_state is not None:
            restore_rng(rng_state)
        else:
            torch.manual_seed(tc.seed + self.rank)
            np.random.seed((tc.seed + self.rank) % 2**32)
            random.seed(tc.seed + self.rank)

    def _check_data(self) -> tuple[int, ...]:
        c = self.config.model
        if self.n_train < 1:
            raise ValueError(f"dataset {self.config.data.name!r} has no training images")
        shape = tuple(self.dataset[0]["image"].shape)
        if len(shape) != 3 or shape[0] != c.in_channels or shape[1] % c.factor or shape[2] % c.factor:
            raise ValueError(f"the autoencoder (model.in_channels={c.in_channels}, model.factor={c.factor}) cannot "
                             f"encode the dataset's images of shape {shape}: channels must match and H, W be "
                             f"divisible by the factor")
        return shape

    def _load(self, path: Path) -> dict[str, Any] | None:
        ck = load_checkpoint(path)
        model = ck["model"]
        for prefix, net in (("autoencoder.", self.raw_ae), ("discriminator.", self.raw_disc)):
            part = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
            load_weights(net, part, f"{path / 'model.safetensors'} ({prefix[:-1]})")
        st = ck["state"]
        try:
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
            position, (self.nan_total, self.nan_streak) = st["data"]["position"], st["nan"]
            self.elapsed = float(st.get("elapsed_s", 0.0))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: cannot restore training state ({e!r})") from None
        self.step = ck["step"]
        if position != self.step * self.config.train.batch_size:
            raise ValueError(f"{path}: data position {position} is not step {self.step} x train.batch_size")
        rngs = st.get("rng", [])
        return rngs[self.rank] if self.rank < len(rngs) else None

    def train_step(self) -> dict[str, float]:
        """One update of the autoencoder and (from ``loss.disc_start``) the discriminator; global means."""
        c, tc, acc = self.config, self.config.train, self.acc
        x = next(self.batches).to(acc.device)
        first = self.rank * self.micro
        gens = [torch.Generator().manual_seed(int(s))
                for s in stream_seeds(tc.seed, _NOISE, self.step, tc.batch_size)[first:first + len(x)]]
        recon, posterior = self.ae(x, True, gens)
        err = (recon - x).abs() if c.loss.reconstruction == "l1" else (recon - x).square()
        rec = err.flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = rec + c.loss.kl_weight * kl
        zero = torch.zeros((), device=acc.device)
        g_loss, d_loss, weight = zero, zero, zero
        gan = c.loss.disc_weight > 0 and disc_factor(self.step, c.loss.disc_start) > 0
        if gan:
            g_loss = hinge_g_loss(self.disc(recon))
            weight = c.loss.disc_weight * adaptive_weight(rec, g_loss, self.raw_ae.last_layer,
                                                          max_weight=c.loss.max_adaptive_weight)
            loss = loss + weight * g_loss
        self.opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if gan:  # the generator loss also reached the discriminator: those gradients are not its own
            for p in self.disc.parameters():
                p.grad = None
            logits = self.disc(torch.cat([x, recon.detach()]))
            d_loss = hinge_d_loss(*logits.chunk(2))
            acc.backward(d_loss)
        if c.optim.grad_clip > 0:
            acc.clip_grad_norm_(self.ae.parameters(), c.optim.grad_clip)
        stats = acc.reduce(torch.stack([loss, rec, kl, g_loss, d_loss, weight]).detach().float(), "mean")
        if bool(torch.isfinite(stats).all()):
            self.opt.step()
            self.nan_streak = 0
        else:
            self.nan_total, self.nan_streak = self.nan_total + 1, self.nan_streak + 1
            if self.nan_streak >= tc.max_nan_steps:
                raise TrainingDiverged(f"autoencoder training stopped at step {self.step}: {self.nan_streak} "
                                       "consecutive non-finite losses; lower optim.lr")
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return dict(zip(self.STATS, stats.tolist(), strict=True))

    def save(self) -> None:
        """Checkpoint the current step (collective: every process must call it)."""
        from accelerate.utils import gather_object

        rngs = gather_object([capture_rng()]) if self.world > 1 else [capture_rng()]
        if self.main:
            model = {**{f"autoencoder.{k}": v for k, v in self.raw_ae.state_dict().items()},
                     **{f"discriminator.{k}": v for k, v in self.raw_disc.state_dict().items()}}
            state = {"data": {"position": self.step * self.config.train.batch_size}, "rng": rngs,
                     "scheduler": self.sched.state_dict(),
                     "nan": [self.nan_total, self.nan_streak], "elapsed_s": self.elapsed,
                     "image_shape": list(self.image_shape), "world_size": self.world}
            save_checkpoint(self.out / CHECKPOINTS, self.step, model=model, ema={}, optimizer=self.opt.state_dict(),
                            state=state, keep_last=self.config.train.keep_last)
        self.acc.wait_for_everyone()

    def fit(self, stop_at: int | None = None) -> Path:
        """Train to ``train.steps`` (or stop, checkpointed, after ``stop_at``); at the end :meth:`finish`."""
        from tqdm.auto import tqdm

        tc = self.config.train
        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        bar = tqdm(total=tc.steps, initial=self.step, desc="autoencoder", dynamic_ncols=True,
                   disable=not (self.progress and self.main))
        sums, count, saved_at, t_log = np.zeros(len(self.STATS)), 0, -1, time.perf_counter()
        try:
            while self.step < end:
                t0 = time.perf_counter()
                stats = self.train_step()
                self.elapsed += time.perf_counter() - t0
                bar.update(1)
                sums, count = sums + np.array([stats[k] for k in self.STATS]), count + 1
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.perf_counter()
                    row = dict(zip(self.STATS, (sums / count).tolist(), strict=True), step=self.step,
                               elapsed_s=self.elapsed,
                               images_per_s=tc.batch_size * count / max(now - t_log, 1e-9))
                    if self.log is not None:
                        self.log.log(row)
                    bar.set_postfix(rec=f"{row['rec']:.1f}", g=f"{row['g_loss']:.2f}", d=f"{row['d_loss']:.2f}")
                    sums, count, t_log = np.zeros(len(self.STATS)), 0, now
                if tc.save_every and self.step % tc.save_every == 0:
                    self.save()
                    saved_at = self.step
            if saved_at != self.step:
                self.save()
            if self.step >= tc.steps and self.main:
                self.finish()
        finally:
            bar.close()
            if self.log is not None:
                self.log.plot()
                self.log.close()
        self.acc.wait_for_everyone()
        return self.out

    def finish(self) -> dict[str, Any]:
        """Set the latent scale from training images, export the autoencoder, write ``metrics.json``."""
        c, device = self.config, self.acc.device
        ae = self.raw_ae
        train_x = stack_images([self.dataset[i] for i in range(min(c.eval.scale_images, self.n_train))])
        scale, shift = compute_latent_scale(ae, train_x.to(device), center=c.eval.center_latents,
                                            generator=torch.Generator().manual_seed(c.train.seed),
                                            batch_size=c.eval.batch_size)
        ae.set_latent_scale(scale, shift)
        save_autoencoder(ae, self.out, step=self.step, image_shape=list(self.image_shape))
        h, w = self.image_shape[1:]
        metrics: dict[str, Any] = {"step": self.step, "train_time_s": round(self.elapsed, 1),
                                   "parameters": sum(p.numel() for p in ae.parameters()),
                                   "latent_shape": list(c.model.latent_shape(h, w)), "scale_factor": scale,
                                   "shift": shift}
        if self.held_out is not None and len(self.held_out) > 0:
            held = stack_images([self.held_out[i] for i in range(len(self.held_out))])
            e = c.eval
            net, desc = (None, "none (eval.features: none)") if e.features == "none" else \
                rfid_feature_network(c.data.name, c.data.options, inception=e.inception, cache_dir=e.cache_dir)
            net = net.to(device) if net is not None else None
            ref = train_x[:len(held)] if len(train_x) >= len(held) else None
            metrics.update(evaluate_autoencoder(ae, held, feature_net=net, feature_desc=desc, reference=ref,
                                                mean_image=train_x.mean(0, keepdim=True),
                                                batch_size=c.eval.batch_size))
            metrics.setdefault("feature_network", desc)
            shown = held[:8]
            save_image_grid(torch.cat([shown, reconstruct(ae, shown)]), self.out / "reconstructions.png", len(shown))
        write_text_atomic(self.out / METRICS, json.dumps(metrics, indent=1) + "\n")
        return metrics


def train_autoencoder(config: AutoencoderTrainConfig | str | os.PathLike[str], out: str | os.PathLike[str], *,
                      overrides: Sequence[str] = (), resume: bool = False, progress: bool = True) -> Path:
    """Train an autoencoder per a config (or YAML file, with dotted ``overrides``) into ``out``; return it."""
    if isinstance(config, AutoencoderTrainConfig):
        cfg = AutoencoderTrainConfig.from_dict(config.to_dict(), overrides) if overrides else config
    else:
        cfg = load_autoencoder_config(config, overrides)
    return AutoencoderTrainer(cfg, out, resume=resume, progress=progress).fit()


def run_train_autoencoder(config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                          overrides: Sequence[str] = (), resume: bool = False) -> int:
    """``denoisekit train-autoencoder CONFIG --out DIR [--set k=v] [--resume]``: train, print the metrics."""
    out = train_autoencoder(config_path, out_dir, overrides=overrides, resume=resume)
    if (out / METRICS).is_file():
        m = json.loads((out / METRICS).read_text())
        parts = [f"{k} {m[k]:.4g}" for k in ("psnr", "psnr_mean_image", "rfid", "rfid_floor", "scale_factor")
                 if isinstance(m.get(k), (int, float))]
        print(f"{out}: " + ", ".join(parts))
    return 0
