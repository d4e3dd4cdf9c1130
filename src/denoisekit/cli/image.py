"""``denoisekit train``, ``sample``, ``tune``, ``eval`` and ``report``: image models from a YAML config."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils import seeded_generators
from ..conditioning import condition_keys, image_conditioner
from ..generation.generate import FILE_PREFIX
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
    p.add_argument("--schedule", default=None,
                   help=f"step schedule: {', '.join(SCHEDULES)}, or file:PATH (a grid saved by save_sigmas)")
    p.add_argument("--solver", default=None, metavar="JSON",
                   help="a learned solver from 'denoisekit tune' (sets the sampler, its weights, grid and NFE)")
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


def _settings(args: argparse.Namespace, model: Any) -> tuple[dict[str, Any], str]:
    """generate()'s sampler settings (``sampler``, ``nfe``, ``schedule`` or ``solver``; ``sampler_options``), checked
    before any work, and how they read in the summary line."""
    from ..samplers.run import nfe_of, steps_for_nfe
    from ..samplers.tuning.solver import load_solver

    sc, options = model.defaults, key_values(args.sampler_arg, "--sampler-arg")
    if args.solver is not None:
        for flag, value in (("--sampler", args.sampler), ("--nfe", args.nfe), ("--schedule", args.schedule)):
            if value is not None:
                raise UsageError(f"--solver sets the sampler, its grid and NFE: drop {flag}")
        solver = load_solver(args.solver)
        tuned_for = solver.meta.get("weights_sha256")
        if tuned_for and model.sha256 and tuned_for != model.sha256:
            print(f"warning: {args.solver} was tuned for other weights ({solver.meta.get('run', '?')}); "
                  f"it still samples, but was not fitted to this model", file=sys.stderr)
        return {"solver": solver, "sampler_options": options}, f"learned solver {args.solver}, {solver.nfe} NFE"
    sampler, nfe = args.sampler or sc.sampler, args.nfe if args.nfe is not None else sc.nfe
    schedule = args.schedule or sc.schedule
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}; allowed: {', '.join(sorted(SAMPLERS))}")
    if schedule.startswith(FILE_PREFIX):
        from ..generation import sampling_grid

        grid = sampling_grid(model, sampler=sampler, nfe=1, schedule=schedule)
        nfe = nfe_of(sampler, len(grid) - 1, **options)
    elif schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {schedule!r}; allowed: {', '.join(sorted(SCHEDULES))} or {FILE_PREFIX}PATH")
    else:
        steps_for_nfe(sampler, nfe, **options)  # checks NFE before any work
    return {"sampler": sampler, "nfe": nfe, "schedule": schedule, "sampler_options": options}, \
        f"{sampler}, {nfe} NFE, {schedule}"


def _check_flags(args: argparse.Namespace, model: Any) -> None:
    """Flags that do not fit the model's condition: one line naming the flag."""
    kind, text = model.kind, "text" in condition_keys(model.condition)  # the keys its condition kind claims
    if text and args.label is not None:
        raise UsageError("--label given, but this model is text-conditional (use --prompt)")
    if args.prompt or args.prompts_file:
        if not text:
            raise UsageError(f"--prompt given, but this model is not text-conditional (condition.kind: {kind})")
    elif text and not model.captions:
        raise UsageError("this model is text-conditional: give --prompt TEXT (or --prompts-file)")
    if model.decoder is not None and args.classifier is not None:
        raise UsageError("--classifier guides in pixel space; this run samples latents (latent.autoencoder: "
                         f"{model.config.latent.autoencoder})")
    if args.classifier is None and args.classifier_scale != 1.0:
        raise UsageError("--classifier-scale needs --classifier")
    guided = args.cfg_rescale != 0 or args.cfg_interval is not None or args.negative_prompt is not None
    if not model.guided and (args.cfg not in (None, 1) or guided):
        raise UsageError("--cfg, --cfg-rescale, --cfg-interval and --negative-prompt need a class- or "
                         "text-conditional model")
    if args.negative_prompt is not None and not text:
        raise UsageError("--negative-prompt needs a text-conditional model")


def _load_classifier(args: argparse.Namespace, model: Any) -> Any:
    """The classifier of ``--classifier`` (guidance toward each image's label), checked against the model."""
    from ..train.classifier import load_classifier

    if set(condition_keys(model.condition)) - {"labels"}:
        raise UsageError(f"--classifier guides toward class labels; this model is conditioned on {model.kind}")
    clf = load_classifier(args.classifier)
    # Any process will do: the classifier sees the VE-frame input mapped to its own process's x_t and time.
    classes = clf.info["config"].model.num_classes
    if model.num_classes is not None and classes != model.num_classes:
        raise UsageError(f"--classifier {args.classifier} has {classes} classes; the model has {model.num_classes}")
    return clf


def _prompts(args: argparse.Namespace) -> list[str] | None:
    """``--prompt`` and the lines of ``--prompts-file``; None when neither is given (the run's prompts)."""
    given = list(args.prompt or [])
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UsageError(f"--prompts-file {str(path)!r} does not exist")
        given += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return given or None


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


def _restore(args: argparse.Namespace, out: Path, model: Any, settings: dict[str, Any], shown_as: str, n: int) -> int:
    """``sample --source``: image-to-image sampling (Palette) of an image-conditioned run."""
    from ..data.transforms import tensor_to_uint8
    from ..engine.runlog import save_image_grid
    from ..pipelines.palette import restore

    conditioner = image_conditioner(model.condition)
    if conditioner is None:
        raise UsageError(f"--source given, but this model is not image-conditioned (condition.kind: {model.kind})")
    if args.source is None:
        raise UsageError("this model is image-conditioned: give --source (an .npz of images or one image file)")
    for flag, value in (("--prompt", args.prompt), ("--label", args.label), ("--cfg", args.cfg)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to an image-conditioned model")
    gens = seeded_generators(args.seed, n)
    kwargs = {k: v for k, v in settings.items() if k != "sampler_options"}
    try:
        source, truth = _read_source(Path(args.source), conditioner, n, gens)
        count = len(source[0] if isinstance(source, tuple) else source)
        start = time.perf_counter()
        with threads(args.threads or torch.get_num_threads()), torch.no_grad():
            x = restore(model, conditioner, source, generator=gens[:count], batch_size=args.batch, **kwargs,
                        **settings["sampler_options"])
    except ValueError as e:
        raise UsageError(f"--source {args.source}: {e}") from None
    seconds = time.perf_counter() - start
    shown = conditioner.shown(conditioner.from_source(source, aug=0.0 if conditioner.task == "super_resolution"
                                                      else None))
    err = conditioner.consistency(x, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        save_image_grid(torch.cat([shown, x] + ([truth] if truth is not None else [])), out, len(x))
    else:
        extra = {"truth": tensor_to_uint8(truth)} if truth is not None else {}
        np.savez_compressed(out, images=tensor_to_uint8(x), source=tensor_to_uint8(shown), consistency=err.numpy(),
                            **extra)
    print(f"{len(x)} {conditioner.task} results from {args.run} ({shown_as}) in {seconds:.1f} s; mean consistency "
          f"error with the input {err.mean().item():.4f}; wrote {out}")
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from ..data.transforms import tensor_to_uint8
    from ..engine.runlog import save_image_grid
    from ..pipelines.generate import generate_images
    from ..train.run import load_model

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise UsageError(f"--out must end in .png or .npz, got {out.name!r}")
    model = load_model(args.run, weights=args.weights)
    settings, shown_as = _settings(args, model)
    n = args.n or model.defaults.n
    if image_conditioner(model.condition) is not None or args.source is not None:
        return _restore(args, out, model, settings, shown_as, n)
    _check_flags(args, model)
    clf = _load_classifier(args, model) if args.classifier is not None else None
    label: Any = args.label
    if label is not None and label != "all":
        try:
            label = int(label)
        except ValueError:
            pass  # the pipeline names what it expected
    start = time.perf_counter()
    try:
        with threads(args.threads or torch.get_num_threads()), torch.no_grad():
            result = generate_images(
                model, n, labels=label, prompts=_prompts(args), negative_prompt=args.negative_prompt,
                cfg_scale=args.cfg, cfg_rescale=args.cfg_rescale,
                cfg_interval=tuple(args.cfg_interval) if args.cfg_interval else None, classifier=clf,
                classifier_scale=args.classifier_scale,
                num_labels=clf.info["config"].model.num_classes if clf is not None else None,
                seed=args.seed, batch_size=args.batch, **settings)
    except ValueError as e:
        raise UsageError(f"{e}") from None
    seconds = time.perf_counter() - start
    x, n = result.images, len(result.images)
    if not torch.isfinite(x).all():
        raise FloatingPointError("samples contain NaN or inf")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        save_image_grid(x, out, result.per_row)
    else:
        labels = result.labels.numpy() if result.labels is not None else np.full(n, -1)
        extra = {"prompts": np.array(result.prompts, dtype=str)} if result.prompts is not None else {}
        np.savez_compressed(out, images=tensor_to_uint8(x), labels=labels.astype(np.int64), **extra)
    space = (f"; latents {'x'.join(map(str, model.image_shape))} decoded to {'x'.join(map(str, x.shape[1:]))}"
             if model.decoder is not None else "")
    scale = model.defaults.cfg_scale if args.cfg is None else args.cfg
    print(f"{n} images from {args.run} ({shown_as}, cfg {scale:g}) in {seconds:.1f} s ({n / seconds:.1f} "
          f"images/s{space}); wrote {out}")
    return 0


# -------------------------------------------------------------------------------------------- tune

def _add_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by 'denoisekit train'")
    p.add_argument("--nfe", type=positive_int, required=True, help="model evaluations of the solver")
    p.add_argument("--out", required=True, help="the solver's JSON file (for 'denoisekit sample --solver')")
    p.add_argument("--samples", type=positive_int, default=512, help="tuning start noises (default 512)")
    p.add_argument("--eval-samples", type=positive_int, default=256,
                   help="held-out start noises the tuned and default errors are measured on (default 256)")
    p.add_argument("--iters", type=int, default=200, help="Adam steps on the grid and weights (default 200)")
    p.add_argument("--batch", type=positive_int, default=256, help="tuning rows per Adam step (default 256)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale the solver is fitted at (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="tuning noise i uses seed + i")
    p.add_argument("--weights", default="ema", choices=("ema", "model"))
    p.add_argument("--threads", type=positive_int, default=None)


def _run_tune(args: argparse.Namespace) -> int:
    from ..generation import Guidance, default_guidance
    from ..pipelines.tune import BASELINE, tune_solver
    from ..samplers.tuning.solver import save_solver
    from ..train.run import load_model

    if args.iters < 0:
        raise UsageError(f"--iters must be >= 0, got {args.iters}")
    model = load_model(args.run, weights=args.weights)
    if args.cfg not in (None, 1) and not model.guided:
        raise UsageError("--cfg needs a class- or text-conditional model")
    guidance = default_guidance(model) if args.cfg is None else Guidance(cfg_scale=args.cfg)
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        tuned = tune_solver(model, args.nfe, n_samples=args.samples, eval_samples=args.eval_samples, iters=args.iters,
                            batch_size=args.batch, seed=args.seed, guidance=guidance)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_solver(out, tuned.solver, meta={"run": str(args.run), "weights": args.weights, "weights_sha256": model.sha256,
                                         "nfe": args.nfe, "cfg_scale": guidance.cfg_scale, "samples": args.samples,
                                         "error": tuned.error, "baseline": f"{BASELINE}, {tuned.schedule}",
                                         "baseline_error": tuned.baseline_error})
    learned = "learned grid + weights" if tuned.solver.meta.get("learned") else "tuned grid (training did not help)"
    print(f"tuned a {args.nfe}-NFE solver for {args.run} in {time.perf_counter() - start:.0f} s: mean error "
          f"{tuned.error:.4g} ({learned}) vs {tuned.baseline_error:.4g} ({BASELINE}, {tuned.schedule} grid) on "
          f"{tuned.eval_samples} held-out samples; wrote {out}")
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
    from ..engine.runlog import read_log_rows
    from ..train.run import load_run, run_info

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
    "tune": ("fit a learned solver (grid and weights) to a run's model for 'sample --solver'", _add_tune, _run_tune),
    "eval": ("FID, KID, precision/recall of samples against a reference", _add_eval, _run_eval),
    "report": ("write report.md for a run from its metrics.json", _add_report, _run_report),
}
