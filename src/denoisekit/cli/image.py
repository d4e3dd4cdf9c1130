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
    p.add_argument("--out", required=True, help="a .png grid, or a .npz of uint8 images (N, H, W, C), labels (and prompts)")
    p.add_argument("--n", type=positive_int, default=None, help="number of images (default: the config's)")
    p.add_argument("--sampler", default=None, help="sampler (default: the config's; see 'denoisekit list')")
    p.add_argument("--nfe", type=int, default=None, help="model evaluations (default: the config's)")
    p.add_argument("--schedule", default=None, help=f"step schedule: {', '.join(SCHEDULES)}")
    p.add_argument("--sampler-arg", action="append", metavar="KEY=VALUE", help="sampler option, e.g. eta=1")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--cfg-rescale", type=float, default=0.0, metavar="PHI",
                   help="guidance rescale phi in [0, 1] (Lin et al. 2023; 0 = plain guidance)")
    p.add_argument("--cfg-interval", type=float, nargs=2, default=None, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="guide only while sigma_lo < sigma <= sigma_hi (Kynkaanniemi et al. 2024)")
    p.add_argument("--label", default=None,
                   help="class label for every image, or 'all' (default for a class model): one row per class")
    p.add_argument("--prompt", action="append", default=None,
                   help="text prompt (text models; repeatable: one row per prompt)")
    p.add_argument("--prompts-file", default=None, help="text file with one prompt per line")
    p.add_argument("--negative-prompt", default=None, help="prompt to steer away from (replaces the empty prompt)")
    p.add_argument("--classifier", default=None,
                   help="classifier guidance (Dhariwal & Nichol 2021): a directory from 'denoisekit train-classifier'")
    p.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale")
    p.add_argument("--source", default=None,
                   help="image-conditioned models: an .npz with clean 'images' (degraded by the model's task) or "
                        "degraded 'source' (+ 'mask' for inpainting), uint8 (N, H, W, C); or one image file")
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


def _load_classifier(args: argparse.Namespace, config: Any) -> Any:
    """The classifier of ``--classifier`` (guidance toward each image's label), checked against the model."""
    from ..train.classifier import load_classifier

    if config.condition.kind not in ("none", "class"):
        raise UsageError(f"--classifier guides toward class labels; this model is conditioned on "
                         f"{config.condition.kind}")
    clf = load_classifier(args.classifier)
    # Any process will do: the classifier sees the VE-frame input mapped to its own process's x_t and time.
    classes = clf.info["config"].model.num_classes
    if config.num_classes is not None and classes != config.num_classes:
        raise UsageError(f"--classifier {args.classifier} has {classes} classes; the model has {config.num_classes}")
    return clf


def _prompts(args: argparse.Namespace, kind: str, default: list[str]) -> list[str] | None:
    """The prompts of a text model (``--prompt``, ``--prompts-file``, else the config's ``sample.prompts``)."""
    given = list(args.prompt or [])
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UsageError(f"--prompts-file {str(path)!r} does not exist")
        given += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if kind != "text":
        if given:
            raise UsageError(f"--prompt given, but this model is not text-conditional (condition.kind: {kind})")
        return None
    if args.label is not None:
        raise UsageError("--label given, but this model is text-conditional (use --prompt)")
    prompts = given or default
    if not prompts:
        raise UsageError("this model is text-conditional: give --prompt TEXT (or --prompts-file)")
    return prompts


def _read_source(path: Path, conditioner: Any, n: int, gens: list[torch.Generator]) -> tuple[Any, Any]:
    """``(source, truth)`` from ``--source``: degraded inputs as given, or clean images degraded here."""
    from ..data.folder import load_image
    from ..data.transforms import uint8_to_tensor

    if not path.is_file():
        raise UsageError(f"--source {str(path)!r} does not exist")
    if path.suffix.lower() != ".npz":
        c, h, w = conditioner.image_shape
        try:
            clean = load_image(str(path), None, 1 if c == 1 else 3)[None]
        except OSError as e:
            raise UsageError(f"--source {str(path)!r}: not a readable image ({e})") from None
        if tuple(clean.shape[2:]) != (h, w):
            raise UsageError(f"--source {str(path)!r} is {clean.shape[3]}x{clean.shape[2]}; this model restores "
                             f"{w}x{h} images (give a clean image of that size, or an .npz 'source')")
        return conditioner.degrade(clean, gens[:1]), clean
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}

    def tensor(key: str) -> torch.Tensor:
        a = arrays[key][:n]
        if a.dtype != np.uint8 or a.ndim not in (3, 4):
            raise UsageError(f"--source {path.name}: {key!r} must be uint8 (N, H, W[, C]), got {a.dtype} {a.shape}")
        return torch.stack([uint8_to_tensor(im) for im in a])

    if "source" in arrays:
        src = tensor("source")
        if conditioner.task != "inpaint":
            return src, None
        if "mask" not in arrays:
            raise UsageError(f"--source {path.name}: inpainting needs a 'mask' array (N, H, W), 1 = missing")
        mask = torch.as_tensor(np.asarray(arrays["mask"][:n], dtype=np.float32)).reshape(len(src), 1, *src.shape[2:])
        return (src, mask), None
    if "images" not in arrays:
        raise UsageError(f"--source {path.name}: expected an 'images' or a 'source' array, found "
                         f"{', '.join(sorted(arrays)) or 'none'}")
    clean = tensor("images")
    return conditioner.degrade(clean, gens[:len(clean)]), clean


def _restore(args: argparse.Namespace, out: Path, denoiser: Any, config: Any, image_shape: tuple[int, ...],
             sampler: str, nfe: int, schedule: str, options: dict[str, Any], n: int) -> int:
    """``sample --source``: image-to-image sampling (Palette) of an image-conditioned run."""
    from ..pipelines.palette import restore
    from ..train.image_condition import ImageConditioner
    from ..train.runlog import save_image_grid

    if config.condition.kind != "image":
        raise UsageError(f"--source given, but this model is not image-conditioned (condition.kind: "
                         f"{config.condition.kind})")
    if args.source is None:
        raise UsageError("this model is image-conditioned: give --source (an .npz of images or one image file)")
    for flag, value in (("--prompt", args.prompt), ("--label", args.label), ("--cfg", args.cfg)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to an image-conditioned model")
    conditioner = ImageConditioner(config.condition_options(), image_shape)
    gens = seeded_generators(args.seed, n)
    try:
        source, truth = _read_source(Path(args.source), conditioner, n, gens)
        count = len(source[0] if isinstance(source, tuple) else source)
        start = time.perf_counter()
        with threads(args.threads or torch.get_num_threads()), torch.no_grad():
            x = restore(denoiser, conditioner, source, sampler=sampler, nfe=nfe, schedule=schedule,
                        generator=gens[:count], **options)
    except ValueError as e:
        raise UsageError(f"--source {args.source}: {e}") from None
    seconds = time.perf_counter() - start
    shown = conditioner.shown(conditioner.from_source(source, aug=0.0 if conditioner.task == "super_resolution"
                                                      else None))
    err = conditioner.consistency(x, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        rows = [shown, x] + ([truth] if truth is not None else [])
        save_image_grid(torch.cat(rows), out, len(x))
    else:
        from ..data.transforms import tensor_to_uint8

        extra = {"truth": tensor_to_uint8(truth)} if truth is not None else {}
        np.savez_compressed(out, images=tensor_to_uint8(x), source=tensor_to_uint8(shown), consistency=err.numpy(),
                            **extra)
    print(f"{len(x)} {conditioner.task} results from {args.run} ({sampler}, {nfe} NFE) in {seconds:.1f} s; "
          f"mean consistency error with the input {err.mean().item():.4f}; wrote {out}")
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from ..guidance import ClassifierFreeGuidance
    from ..sampling import sample, steps_for_nfe
    from ..train.runlog import save_image_grid
    from ..train.latent import decode, load_latent_decoder
    from ..train.trainer import load_run, run_info

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise UsageError(f"--out must end in .png or .npz, got {out.name!r}")
    denoiser, config = load_run(args.run, weights=args.weights)
    info = run_info(args.run)
    decoder = load_latent_decoder(args.run)  # None in pixel space
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
    kind = config.condition.kind
    if kind == "image" or args.source is not None:
        return _restore(args, out, denoiser, config, info["image_shape"], sampler, nfe, schedule, options, n)
    if decoder is not None and args.classifier is not None:
        raise UsageError("--classifier guides in pixel space; this run samples latents (latent.autoencoder: "
                         f"{config.latent.autoencoder})")
    clf = _load_classifier(args, config) if args.classifier is not None else None
    prompts = _prompts(args, kind, list(sc.prompts))
    if prompts is not None:
        per_row = max(1, n // len(prompts))
        conds: Any = [p for p in prompts for _ in range(per_row)]
        n = len(conds)
    else:
        classes = config.num_classes if clf is None else clf.info["config"].model.num_classes
        conds, per_row = _labels(args.label, n, classes)
        n = len(conds) if conds is not None else n
    labels = conds if isinstance(conds, torch.Tensor) else None
    scale = sc.cfg_scale if args.cfg is None else args.cfg
    guided = args.cfg_rescale != 0 or args.cfg_interval is not None or args.negative_prompt is not None
    if args.classifier is None and args.classifier_scale != 1.0:
        raise UsageError("--classifier-scale needs --classifier")
    if kind not in ("class", "text") and (args.cfg not in (None, 1) or guided):
        raise UsageError("--cfg, --cfg-rescale, --cfg-interval and --negative-prompt need a class- or "
                         "text-conditional model")
    if args.negative_prompt is not None and prompts is None:
        raise UsageError("--negative-prompt needs a text-conditional model")
    den: Any = denoiser
    if kind in ("class", "text") and scale != 1:
        try:
            den = ClassifierFreeGuidance(denoiser, scale, null_label=config.num_classes, rescale=args.cfg_rescale,
                                         interval=tuple(args.cfg_interval) if args.cfg_interval else None,
                                         negative=None if args.negative_prompt is None else
                                         {"text": [args.negative_prompt]})
        except ValueError as e:
            raise UsageError(str(e)) from None
    if clf is not None:
        from ..guidance import ClassifierGuidance

        den = ClassifierGuidance(den, clf, args.classifier_scale, conditional=kind == "class")
    gens = seeded_generators(args.seed, n)
    chunks = []
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()), torch.no_grad():
        for i in range(0, n, args.batch):
            j = min(n, i + args.batch)
            cond = None if conds is None else conds[i:j] if labels is not None else {"text": conds[i:j]}
            x = sample(den, (j - i, *info["image_shape"]), sampler=sampler, nfe=nfe, schedule=schedule,
                       cond=cond, generator=gens[i:j], **options)
            chunks.append(decode(decoder, x) if decoder is not None else x)
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
        extra = {"prompts": np.array(conds, dtype=str)} if prompts is not None else {}
        np.savez_compressed(out, images=images, labels=lab.astype(np.int64), **extra)
    space = (f"; latents {'x'.join(map(str, info['image_shape']))} decoded to {'x'.join(map(str, x.shape[1:]))}"
             if decoder is not None else "")
    print(f"{n} images from {args.run} ({sampler}, {nfe} NFE, {schedule}, cfg {scale:g}) in {seconds:.1f} s "
          f"({n / seconds:.1f} images/s{space}); wrote {out}")
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
