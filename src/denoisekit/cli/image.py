"""``denoisekit train``, ``sample``, ``eval`` and ``report``: image models from a YAML config."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils import seeded_generators
from ..samplers import SAMPLERS
from ..schedules import SCHEDULES
from .common import UsageError, key_values, positive_int, threads


# ------------------------------------------------------------------------------------------- train

def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (see configs/); optional with --resume")
    p.add_argument("--out", required=True, help="run directory (config.yaml, checkpoints/, logs, samples.png)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set train.steps=500 --set model.channels=64)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run's latest checkpoint")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train(args: argparse.Namespace) -> int:
    from ..train.trainer import train_from_config

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        run = train_from_config(args.config, args.out, overrides=args.set, resume=args.resume,
                                progress=not args.quiet)
    print(f"trained in {time.perf_counter() - start:.0f} s; wrote {run} (samples.png, loss.png, log.csv)")
    return 0


# ------------------------------------------------------------------------------------------ sample

def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by 'denoisekit train'")
    p.add_argument("--out", required=True, help="a .png grid, or a .npz of uint8 images (N, H, W, C) and labels")
    p.add_argument("--n", type=positive_int, default=None, help="number of images (default: the config's)")
    p.add_argument("--sampler", default=None, help="sampler (default: the config's; see 'denoisekit list')")
    p.add_argument("--nfe", type=int, default=None, help="model evaluations (default: the config's)")
    p.add_argument("--schedule", default=None, help=f"step schedule: {', '.join(SCHEDULES)}")
    p.add_argument("--sampler-arg", action="append", metavar="KEY=VALUE", help="sampler option, e.g. eta=1")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--label", default=None,
                   help="class label for every image, or 'all' (default for a class model): one row per class")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i, whatever the batch size")
    p.add_argument("--batch", type=positive_int, default=256, help="images per model call")
    p.add_argument("--weights", default="ema", choices=("ema", "model"))
    p.add_argument("--threads", type=positive_int, default=None)


def _labels(arg: str | None, n: int, num_classes: int | None) -> tuple[torch.Tensor | None, int]:
    """Per-image labels and the grid's images per row."""
    if num_classes is None:
        if arg is not None:
            raise UsageError("--label given, but this model is not class-conditional")
        return None, max(1, math.ceil(math.sqrt(n)))
    if arg is None or arg == "all":
        per_class = max(1, n // num_classes)
        return torch.arange(num_classes).repeat_interleave(per_class), per_class
    try:
        label = int(arg)
    except ValueError:
        raise UsageError(f"--label must be an integer in 0..{num_classes - 1} or 'all', got {arg!r}") from None
    if not 0 <= label < num_classes:
        raise UsageError(f"--label {label} is out of range: this model has classes 0..{num_classes - 1}")
    return torch.full((n,), label), max(1, math.ceil(math.sqrt(n)))


def _run_sample(args: argparse.Namespace) -> int:
    from ..guidance import ClassifierFreeGuidance
    from ..sampling import sample, steps_for_nfe
    from ..train.runlog import save_image_grid
    from ..train.trainer import load_run, run_info

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise UsageError(f"--out must end in .png or .npz, got {out.name!r}")
    denoiser, config = load_run(args.run, weights=args.weights)
    info = run_info(args.run)
    sc = config.sample
    sampler, nfe = args.sampler or sc.sampler, args.nfe if args.nfe is not None else sc.nfe
    schedule = args.schedule or sc.schedule
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}; allowed: {', '.join(sorted(SAMPLERS))}")
    if schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {schedule!r}; allowed: {', '.join(sorted(SCHEDULES))}")
    options = key_values(args.sampler_arg, "--sampler-arg")
    steps_for_nfe(sampler, nfe, **options)  # checks NFE before any work
    n = args.n or sc.n
    labels, per_row = _labels(args.label, n, config.num_classes)
    n = len(labels) if labels is not None else n
    scale = sc.cfg_scale if args.cfg is None else args.cfg
    if labels is not None and scale != 1:
        den: Any = ClassifierFreeGuidance(denoiser, scale, null_label=config.num_classes)
    else:
        den = denoiser
        if args.cfg is not None and args.cfg != 1 and labels is None:
            raise UsageError("--cfg needs a class-conditional model")
    gens = seeded_generators(args.seed, n)
    chunks = []
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()), torch.no_grad():
        for i in range(0, n, args.batch):
            j = min(n, i + args.batch)
            cond = labels[i:j] if labels is not None else None
            chunks.append(sample(den, (j - i, *info["image_shape"]), sampler=sampler, nfe=nfe, schedule=schedule,
                                 cond=cond, generator=gens[i:j], **options))
    x = torch.cat(chunks)
    seconds = time.perf_counter() - start
    if not torch.isfinite(x).all():
        raise FloatingPointError("samples contain NaN or inf")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        save_image_grid(x, out, per_row)
    else:
        images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        lab = labels.numpy() if labels is not None else np.full(n, -1)
        np.savez_compressed(out, images=images, labels=lab.astype(np.int64))
    print(f"{n} images from {args.run} ({sampler}, {nfe} NFE, {schedule}, cfg {scale:g}) in {seconds:.1f} s "
          f"({n / seconds:.1f} images/s); wrote {out}")
    return 0


# -------------------------------------------------------------------------------------------- eval

def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("samples", help=".npz written by 'denoisekit sample' (images, labels)")
    p.add_argument("--ref", default="digits", help="built-in dataset name (digits) or an .npz of real images")
    p.add_argument("--features", default="auto", help="auto, digits, or inception (needs --inception)")
    p.add_argument("--inception", default=None, help="local FID Inception weights (pt_inception-2015-12-05)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")


def _run_eval(args: argparse.Namespace) -> int:
    from ..eval.report import evaluate, format_metrics

    if not Path(args.samples).is_file():
        raise FileNotFoundError(f"samples file {args.samples!r} does not exist")
    metrics = evaluate(args.samples, ref=args.ref, features=args.features, inception=args.inception)
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


# ------------------------------------------------------------------------------------------ report

def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory with metrics.json (from 'denoisekit eval --json')")


def _run_report(args: argparse.Namespace) -> int:
    from ..train.runlog import read_log_rows
    from ..train.trainer import load_run, run_info

    run = Path(args.run)
    _, config = load_run(run)
    info = run_info(run)
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: missing (run 'denoisekit eval ... --json {metrics_path}')")
    m = json.loads(metrics_path.read_text())
    rows = [("FID (digits feature network)", "fid"), ("KID", "kid"), ("precision", "precision"), ("recall", "recall"),
            ("density", "density"), ("coverage", "coverage"), ("classifier accuracy of samples", "classifier_accuracy"),
            ("classifier accuracy of real images", "ref_classifier_accuracy"), ("class coverage", "class_coverage")]
    table = "\n".join(f"| {name} | {m[k]:.4g} |" for name, k in rows if isinstance(m.get(k), (int, float)))
    log = read_log_rows(run / "log.csv")
    elapsed = float(log[-1]["elapsed_s"]) if log else float("nan")
    text = f"""# Run report: {run.name}

{config.data.name} ({'x'.join(map(str, info['image_shape']))}), {config.model.name}, process {config.process.name},
prediction {config.process.prediction}; {info['step']} steps of batch {config.train.batch_size} in {elapsed:.0f} s
(final logged loss {float(log[-1]['loss']):.4f}).

![samples](samples.png)

One row per class, sampled with {config.sample.sampler} at {config.sample.nfe} NFE and guidance scale
{config.sample.cfg_scale:g}.

![loss](loss.png)

| metric ({m.get('n_samples')} samples vs {m.get('n_ref')} real) | value |
|---|---|
{table}
"""
    (run / "report.md").write_text(text)
    print(f"wrote {run / 'report.md'}")
    return 0


COMMANDS = {
    "train": ("train an image model from a YAML config", _add_train, _run_train),
    "sample": ("sample a trained run to a PNG grid or an .npz", _add_sample, _run_sample),
    "eval": ("FID, KID, precision/recall of samples against a reference", _add_eval, _run_eval),
    "report": ("write report.md for a run from its metrics.json", _add_report, _run_report),
}
