"""``denoisekit train2d`` and ``sample2d``: the 2-D toy workflow."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.toy2d import DATASETS, POINTS_SUFFIXES, is_points_file, save_points
from ..losses import NOISE_LEVELS, WEIGHTINGS, DiffusionLoss
from ..models import MODELS
from ..prediction import PREDICTIONS
from ..process import PROCESSES
from ..schedules import SCHEDULES, default_schedule
from ..io import write_text_atomic
from .common import (PROG, UsageError, add_device, is_main_process, key_values, positive_int, resolve_device, say,
                     threads)

#: Independent draws of the true data whose distances to the held-out set are averaged as a reference.
REFERENCE_DRAWS = 3
#: What sample2d writes: the scatter plot, the trajectory.
PLOT_SUFFIXES, GIF_SUFFIXES = (".png",), (".gif",)


# ----------------------------------------------------------------------------------------- train2d

def _add_train2d(p: argparse.ArgumentParser) -> None:
    from ..train.toy2d import Toy2DConfig

    d = Toy2DConfig()
    p.add_argument("--data", default=d.data,
                   help=f"dataset: {', '.join(DATASETS)} (default {d.data}), or your own points: an (N, 2) .npy, .npz "
                        "(key 'points') or .csv file, all of which train (--n-train applies to built-in sets); the "
                        "run keeps a copy")
    p.add_argument("--out", required=True,
                   help="run directory to write (config.json, model.safetensors, loss.csv, loss.png)")
    p.add_argument("--process", default=d.process, help=f"noising process: {', '.join(PROCESSES)}")
    p.add_argument("--process-arg", action="append", metavar="KEY=VALUE",
                   help="process keyword argument, repeatable (e.g. beta_schedule=cosine)")
    p.add_argument("--prediction", default=d.prediction, help=f"network output: {', '.join(PREDICTIONS)}")
    p.add_argument("--time-input", default=d.time_input, help="time given to the network: model, t, log_sigma")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"points per optimiser step (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear learning-rate warmup steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay (default {d.weight_decay:g})")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help=f"EMA decay of the exported weights, after its warm-up (default {d.ema_decay:g})")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the training set, the network and the noise (default {d.seed}): same seed, same run")
    p.add_argument("--n-train", type=positive_int, default=d.n_train, help="size of the fixed training set")
    p.add_argument("--noise-levels", default=d.loss.noise_levels, help=f"{', '.join(NOISE_LEVELS)}")
    p.add_argument("--loss-weighting", default=d.loss.weighting, help=f"{', '.join(WEIGHTINGS)}")
    p.add_argument("--gamma", type=float, default=d.loss.gamma, help="gamma of min_snr / soft_min_snr")
    p.add_argument("--objective", choices=("diffusion", "meanflow"), default="diffusion",
                   help="diffusion (default: the denoising loss), or meanflow: the average velocity of Geng et al. "
                        "2025, one network for every step count (needs --process flow --prediction flow --model "
                        "mlp; t and r drawn by --noise-levels; sample it with sample2d --sampler meanflow --nfe 1)")
    p.add_argument("--model", default=d.model,
                   help=f"network: {', '.join(MODELS)} (default {d.model}: CS492D's TimeLinear network; mlp: the "
                        "residual MLP, the default of runs before it)")
    p.add_argument("--hidden", type=positive_int, default=None, help="network width (default 128)")
    p.add_argument("--depth", type=positive_int, default=None,
                   help="hidden layers (timelinear) or residual blocks (mlp) (default 3)")
    p.add_argument("--emb-dim", type=positive_int, default=None,
                   help="time-embedding features (default 256 for timelinear, 64 for mlp)")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint interval (0: at the end)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: small MLPs run fastest on one, busy machine or not)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train2d(args: argparse.Namespace) -> int:
    from ..engine.runlog import save_loss_curve
    from ..train.meanflow import MeanFlowLoss
    from ..train.toy2d import LOSS_FILE, Toy2DConfig, final_loss
    from ..train.recipes.toy2d import train_toy2d

    model = {k: v for k, v in (("hidden", args.hidden), ("depth", args.depth), ("emb_dim", args.emb_dim))
             if v is not None}
    loss: Any = DiffusionLoss(args.noise_levels, args.loss_weighting, gamma=args.gamma)  # type: ignore[arg-type]
    if args.objective == "meanflow":
        if args.model != "mlp":
            raise UsageError(f"--objective meanflow needs a network with a second time input: --model mlp "
                             f"(got {args.model!r})")
        # the JVP differentiates the network in t: time features smooth in t (the default band turns at 1e3 rad per
        # unit t; moons, 1500 steps, 1-step sliced W2 0.73 at time_scale 1, 0.12 at 1e-3: benchmarks/RESULTS.md)
        model.update(second_time=True, time_scale=1e-3)
        loss = MeanFlowLoss(noise_levels=args.noise_levels)
    config = Toy2DConfig(
        out=args.out, data=args.data, n_train=args.n_train, process=args.process,
        process_kwargs=key_values(args.process_arg, "--process-arg"), prediction=args.prediction,
        time_input=args.time_input, model=args.model, model_config=model,
        loss=loss, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
        ema_decay=args.ema_decay, seed=args.seed, save_every=args.save_every)
    start = time.perf_counter()
    with threads(args.threads):
        run = train_toy2d(config, progress=not args.quiet)
    if is_main_process():
        save_loss_curve(run / LOSS_FILE, run / "loss.png")
    say(f"trained {config.data} ({config.process}, {config.prediction}) for {config.steps} steps in "
        f"{time.perf_counter() - start:.1f} s; final loss {final_loss(run):.4f}; wrote {run} (loss.png)")
    return 0


# ---------------------------------------------------------------------------------------- sample2d

def _add_sample2d(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by train2d")
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler name (see 'denoisekit list')")
    p.add_argument("--nfe", type=int, default=10, help="model evaluations (default 10)")
    # auto: uniform log-SNR steps (DPM-Solver's own choice, Lu et al. 2022, Sec. 3.3; on 2-D data at 10 NFE
    # they beat Karras' rho = 7 grid, which spends half its steps above sigma = 10: moons, dpmpp_2m, sliced W2
    # 0.069 vs 0.106), or uniform t for a process with zero terminal SNR (flow, cosine): schedules.default_schedule.
    p.add_argument("--schedule", default="auto",
                   help=f"step schedule: {', '.join(SCHEDULES)} (default auto: log_snr, or trailing (uniform t) for "
                        "flow, cosine and sigmoid processes)")
    p.add_argument("--sampler-arg", action="append", metavar="KEY=VALUE", help="sampler option, e.g. eta=1")
    p.add_argument("--n", type=positive_int, default=2000, help="number of samples (default 2000)")
    p.add_argument("--out", default="samples.png", help="scatter plot to write (PNG)")
    p.add_argument("--gif", default=None, help="also write the sampling trajectory as an animated GIF")
    p.add_argument("--metrics", default=None, help="metrics JSON path (default: --out with .json)")
    p.add_argument("--save-points", default=None, metavar="FILE",
                   help="also write the samples: an (N, 2) float32 .npy, .npz (key 'points') or .csv")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise (default 0)")
    add_device(p)
    p.add_argument("--no-nll", action="store_true", help="skip the (slow) likelihood of held-out data")
    p.add_argument("--nll-points", type=positive_int, default=300, help="held-out points for the NLL")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")


def _run_sample2d(args: argparse.Namespace) -> int:
    with threads(args.threads):
        return _sample2d(args)


def _sample2d(args: argparse.Namespace) -> int:
    from ..data.toy2d import toy2d_log_prob
    from ..eval.toy2d import chamfer_distance, model_nll, sliced_wasserstein, wasserstein2
    from ..eval.plotting import save_scatter, save_trajectory_gif
    from ..samplers.run import sample, steps_for_nfe
    from ..train.toy2d import held_out, load_run

    if args.nfe < 1:
        raise UsageError(f"--nfe must be >= 1, got {args.nfe}")
    if args.schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {args.schedule!r}; allowed: {', '.join(sorted(SCHEDULES))}")
    options = key_values(args.sampler_arg, "--sampler-arg")
    steps = steps_for_nfe(args.sampler, args.nfe, **options)  # checks the sampler and its options before any work
    out = Path(args.out)
    for flag, path, suffixes in (("--out", out, PLOT_SUFFIXES), ("--gif", args.gif, GIF_SUFFIXES)):
        if path is not None and Path(path).suffix.lower() not in suffixes:
            raise UsageError(f"{flag} must end in {' or '.join(suffixes)}; supported: {', '.join(suffixes)}, "
                             f"got {Path(path).name!r}")
    metrics_path = Path(args.metrics) if args.metrics else out.with_suffix(".json")
    if args.save_points is not None and not is_points_file(args.save_points):
        raise UsageError(f"--save-points must end in {', '.join(POINTS_SUFFIXES)}, got {Path(args.save_points).name!r}")
    device = resolve_device(args.device)
    denoiser, config = load_run(args.run)
    denoiser = denoiser.to(device)
    schedule = default_schedule(denoiser.process) if args.schedule == "auto" else args.schedule

    frames: list[dict[str, Any]] = []

    def record(d: dict[str, Any]) -> None:
        frames.append({"x": d["x"].detach().clone(), "sigma": d["sigma_next"], "denoised": d["denoised"].detach()})

    start = time.perf_counter()
    with torch.no_grad():
        x = sample(denoiser, (args.n, 2), sampler=args.sampler, nfe=args.nfe, schedule=schedule,
                   generator=torch.Generator().manual_seed(args.seed), callback=record if args.gif else None,
                   device=device, **options).cpu()
    sample_time = time.perf_counter() - start
    if not torch.isfinite(x).all():
        raise FloatingPointError("samples contain NaN or inf")
    ref = held_out(config, args.n, run_dir=args.run)
    # The same distances from independent draws of the true data: the floor for n points. One draw
    # is noisy (for moons, the +-sqrt(n) imbalance between the two halves moves W2 by 2x), so average.
    draws = [held_out(config, args.n, k, run_dir=args.run) for k in range(1, REFERENCE_DRAWS + 1)]
    metrics: dict[str, Any] = {
        "run": str(args.run), "data": config.data, "process": config.process, "prediction": config.prediction,
        "sampler": args.sampler, "nfe": args.nfe, "steps": steps, "schedule": schedule, "n": args.n,
        "seed": args.seed, "sampling_seconds": round(sample_time, 4),
        "sliced_wasserstein": sliced_wasserstein(x, ref), "w2": wasserstein2(x, ref),
        "chamfer": chamfer_distance(x, ref), "n_reference": len(ref),
        "reference": {"draws": REFERENCE_DRAWS,
                      "sliced_wasserstein": sum(sliced_wasserstein(d, ref) for d in draws) / len(draws),
                      "w2": sum(wasserstein2(d, ref) for d in draws) / len(draws),
                      "chamfer": sum(chamfer_distance(d, ref) for d in draws) / len(draws)},
    }
    if not args.no_nll:
        pts = ref[: args.nll_points]
        start = time.perf_counter()
        try:  # rtol = atol = 1e-4: within 1e-3 nats of 1e-5 on moons, and 10x faster
            metrics["nll_nats"] = float(model_nll(denoiser, pts.to(device), rtol=1e-4, atol=1e-4).mean())
        except (FloatingPointError, OverflowError) as e:  # a diverging model should not cost the samples
            metrics["nll_error"] = f"{type(e).__name__}: {e}"
            print(f"{PROG}: warning: NLL failed ({metrics['nll_error']})", file=sys.stderr)
        else:
            metrics["nll_points"] = len(pts)
            metrics["nll_seconds"] = round(time.perf_counter() - start, 2)
            # the exact data density, smoothed to the same sigma_min: what a perfect model would score
            if not is_points_file(config.data):  # a points file has no known density
                true_lp = toy2d_log_prob(config.data, pts, denoiser.process.sigma_min)
                metrics["reference"]["nll_nats"] = float(-true_lp.mean())

    caption = {"SW": metrics["sliced_wasserstein"], "W2": metrics["w2"]}
    if "nll_nats" in metrics:
        caption["NLL"] = metrics["nll_nats"]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_scatter(x, ref, out, title=f"{config.data}: {args.sampler}, {args.nfe} NFE ({schedule})",
                 metrics=caption)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    written = [str(out), str(metrics_path)]
    if args.gif:
        Path(args.gif).parent.mkdir(parents=True, exist_ok=True)
        save_trajectory_gif(frames, args.gif, reference=ref)
        written.append(args.gif)
    if args.save_points is not None:
        save_points(args.save_points, x)
        written.append(args.save_points)

    r = metrics["reference"]
    print(f"{args.n} samples from {args.run} with {args.sampler}, {args.nfe} NFE ({schedule}) "
          f"in {sample_time:.2f} s")
    note = (f"(independent draws of the data, mean of {REFERENCE_DRAWS})" if not is_points_file(config.data) else
            f"(subsets of the points file, mean of {REFERENCE_DRAWS}: a lower floor)")
    print(f"  {'metric':<12} {'model':>8} {'true data':>10}")
    print(f"  {'sliced W2':<12} {metrics['sliced_wasserstein']:8.4f} {r['sliced_wasserstein']:10.4f}   {note}")
    print(f"  {'W2':<12} {metrics['w2']:8.4f} {r['w2']:10.4f}   {note}")
    print(f"  {'Chamfer':<12} {metrics['chamfer']:8.2f} {r['chamfer']:10.2f}   (squared distances summed over "
          f"{args.n} samples and {len(ref)} data points: CS492D's)")
    if "nll_nats" in metrics:
        exact = f"{r['nll_nats']:10.4f}" if "nll_nats" in r else f"{'-':>10}"
        print(f"  {'NLL (nats)':<12} {metrics['nll_nats']:8.4f} {exact}   (exact density; "
              f"{metrics['nll_points']} held-out points, {metrics['nll_seconds']:.1f} s)")
    print(f"  wrote {', '.join(written)}")
    return 0
