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
from ..options import check_not_file
from ..samplers import SAMPLERS
from ..schedules import SCHEDULES
from ..io import write_text_atomic
from .common import (THREADS_HELP, UsageError, add_device, guidance_scale, key_values, npz_images, positive_int,
                     resolve_device, say,
                     threads)

#: ``--weights`` of the commands that load a run.
WEIGHTS_HELP = "ema: the EMA of the weights (default; what previews show), model: the raw trained weights"


# ------------------------------------------------------------------------------------------- train

def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (see configs/); optional with --resume")
    p.add_argument("--out", required=True, help="run directory (config.yaml, checkpoints/, logs, samples.png)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set train.steps=500 --set model.channels=64)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run's latest checkpoint")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p, training=True)


def _run_train(args: argparse.Namespace) -> int:
    from ..train.trainer import train_from_config

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        run = train_from_config(args.config, args.out, overrides=args.set, resume=args.resume,
                                progress=not args.quiet)
    say(f"trained in {time.perf_counter() - start:.0f} s; wrote {run} (samples.png, loss.png, log.csv)")
    return 0


# ------------------------------------------------------------------------------------------ sample

def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by 'denoisekit train'")
    p.add_argument("--out", default=None,
                   help="a .png grid (rows labelled by class or prompt), a .npz of uint8 images (N, H, W, C), labels "
                        "(and prompts), or a directory DIR/ (ending in '/') of one PNG per image, 00000.png ... "
                        "(for external FID tools); required unless --png-folder is given")
    p.add_argument("--png-folder", default=None, metavar="DIR",
                   help="write one PNG per image into DIR (00000.png ..., at the model's size, the generation "
                        "parameters in each PNG's info): the input of any external FID script; with --out, as well")
    p.add_argument("--n", type=positive_int, default=None,
                   help="number of images, exactly (default: the config's; with --source: at most N, default every "
                        "source image)")
    p.add_argument("--sampler", default=None, help="sampler (default: the config's; see 'denoisekit list')")
    p.add_argument("--nfe", type=int, default=None, help="model evaluations (default: the config's)")
    p.add_argument("--schedule", default=None,
                   help=f"step schedule: {', '.join(SCHEDULES)}, or file:PATH (a grid saved by save_sigmas)")
    p.add_argument("--solver", default=None, metavar="JSON",
                   help="a learned solver from 'denoisekit tune' (sets the sampler, its weights, grid and NFE)")
    p.add_argument("--sampler-arg", action="append", metavar="KEY=VALUE", help="sampler option, e.g. eta=1")
    p.add_argument("--cfg", type=guidance_scale, default=None, help="classifier-free guidance scale >= 0 (1 = none): x_uncond + s (x_cond - x_uncond), "
                        "Ho & Salimans' w + 1 (a course's or paper's w = 2 is --cfg 3)")
    p.add_argument("--cfg-rescale", type=float, default=0.0, metavar="PHI",
                   help="guidance rescale phi in [0, 1] (Lin et al. 2023; 0 = plain guidance)")
    p.add_argument("--cfg-interval", type=float, nargs=2, default=None, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="guide only while sigma_lo < sigma <= sigma_hi (Kynkaanniemi et al. 2024)")
    p.add_argument("--label", default=None,
                   help="class of every image: its index or its name as stored in the run (e.g. --label stripes; "
                        "a wrong one lists them), or 'all' (default for a class model): image i has class i mod K "
                        "(K classes); the PNG grid has one labelled row per class")
    p.add_argument("--prompt", action="append", default=None,
                   help="text prompt (text models; repeatable: one row per prompt)")
    p.add_argument("--prompts-file", default=None, help="text file with one prompt per line")
    p.add_argument("--negative-prompt", default=None, help="prompt to steer away from (replaces the empty prompt)")
    p.add_argument("--classifier", default=None,
                   help="classifier guidance (Dhariwal & Nichol 2021): a directory from 'denoisekit train-classifier'")
    p.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale")
    p.add_argument("--clip-guidance", type=float, default=0.0, metavar="S",
                   help="CLIP guidance scale toward the prompts (GLIDE; the noise-aware CLIP of 'make clip'); 0: none")
    p.add_argument("--source", default=None,
                   help="image-conditioned models: one image file, or an .npz of uint8 (N, H, W[, C]) 'images' or "
                        "'source' (+ 'mask' for inpainting). 'images' at the model's output size are clean images, "
                        "degraded by its task; for super-resolution, 'images' at the input size are the low-res "
                        "inputs. An .npz with both (what 'sample --source ... --out X.npz' writes) uses 'images', the "
                        "restored output, so stages chain: sample sr-8to16 --source low.npz --out s1.npz, then "
                        "sample sr-16to32 --source s1.npz; 'source' alone is taken as the model's degraded input")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i, whatever the batch size")
    p.add_argument("--batch", type=positive_int, default=256, help="images per model call")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help=WEIGHTS_HELP)
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="a LoRA adapter for this run (a .safetensors in the denoisekit, diffusers or kohya layout, or a "
                        "lora run's directory) at WEIGHT (default 1; 0: the base); repeatable: the deltas add up")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="textual-inversion tokens for this text run (a .safetensors or a textual_inversion run's "
                        "directory), so that prompts can use them: --prompt \"a <my-star> shape\"; repeatable")
    p.add_argument("--controlnet", action="append", default=[], metavar="FILE",
                   help="a ControlNet or T2I-Adapter for this run (a controlnet run's directory or its "
                        "controlnet.safetensors); repeatable: their residuals add up, each reading its --control")
    p.add_argument("--control", action="append", default=[], metavar="IMAGE",
                   help="the control image (edge map, mask, ...; grayscale, at the model's size, 0-255 read as 0-1) "
                        "of each --controlnet, in order")
    p.add_argument("--control-scale", type=float, action="append", default=None, metavar="S",
                   help="conditioning scale of each --controlnet (one for all, or one each; default 1; 0: the base)")
    p.add_argument("--control-start", type=float, default=0.0, metavar="F",
                   help="control_guidance_start: the fraction of the trajectory (1 - t) where control starts")
    p.add_argument("--control-end", type=float, default=1.0, metavar="F",
                   help="control_guidance_end: the fraction of the trajectory where control ends")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    add_device(p)


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
    check_not_file(args.classifier, "--classifier")
    clf = load_classifier(args.classifier)
    # Any process will do: the classifier sees the VE-frame input mapped to its own process's x_t and time.
    classes = clf.info["config"].model.num_classes
    if model.num_classes is not None and classes != model.num_classes:
        raise UsageError(f"--classifier {args.classifier} has {classes} classes; the model has {model.num_classes}")
    cfg = clf.info["config"]
    size, channels = cfg.data.options.get("size"), cfg.model.in_channels
    c, h, w = model.image_shape
    if channels != c or (isinstance(size, int) and (size, size) != (h, w)):
        seen = f"{channels}x{size}x{size}" if isinstance(size, int) else f"{channels}-channel"
        raise UsageError(f"--classifier {args.classifier} was trained on {seen} images; this model makes {c}x{h}x{w}: "
                         f"train one at the model's size (--set data.size={h})")
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


def _read_source(path: Path, conditioner: Any, n: int | None, gens: list[torch.Generator],
                 note: Any = print) -> tuple[Any, Any]:
    """``(source, truth)`` from ``--source`` (the rule of its help), its first ``n`` images (None: all): degraded
    inputs as given, or clean images degraded here with ``gens`` (one per image, or more); an .npz with both
    'images' and 'source' gives its 'images' (``note`` says so)."""
    from ..data.folder import load_image

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
        return npz_images("--source", path.name, key, {key: arrays[key][:n]})

    if "images" in arrays and "source" in arrays:
        note(f"note: --source {path.name} has 'images' and 'source': using 'images' (the restored output of a "
             f"previous stage); its 'source' is ignored")
    elif "source" in arrays:
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
    images = tensor("images")
    if conditioner.task == "super_resolution" and tuple(images.shape[1:]) != conditioner.image_shape:
        (_, h, w), (_, sh, sw) = conditioner.image_shape, conditioner.source_shape
        if tuple(images.shape[1:]) != conditioner.source_shape:
            raise UsageError(f"--source {path.name}: 'images' are {tuple(images.shape[1:])} (C, H, W); this model "
                             f"takes {sw}x{sh} low-resolution inputs or {w}x{h} clean images with "
                             f"{conditioner.image_shape[0]} channels")
        return images, None  # low-resolution inputs: a previous stage's output, or the user's own
    return conditioner.degrade(images, gens[:len(images)]), images


def _label(text: str | None, model: Any) -> Any:
    """``--label``: None, ``"all"``, a class index, or a class name stored in the run
    (:func:`~denoisekit.pipelines.generate.resolve_label`); anything else is one line listing the classes."""
    from ..pipelines.generate import resolve_label

    try:
        return resolve_label(text, model.classes, model.num_classes)
    except ValueError as e:
        raise UsageError(f"--{e}") from None


def _count(path: Path) -> int:
    """Images in a ``--source`` file: the first axis of its 'images' (else 'source') array; 1 for an image file."""
    if path.suffix.lower() != ".npz" or not path.is_file():
        return 1
    with np.load(path) as f:
        key = "images" if "images" in f.files else "source" if "source" in f.files else None
        return len(f[key]) if key is not None and f[key].ndim >= 3 else 1


def _restore(args: argparse.Namespace, out: Path, model: Any, settings: dict[str, Any], shown_as: str,
             n: int | None) -> int:
    """``sample --source``: image-to-image sampling (Palette) of an image-conditioned run."""
    from ..eval.plotting import grid_image
    from ..pipelines.output import is_directory, save_each, save_npz
    from ..pipelines.palette import restore
    from ..pipelines.png_info import save_png_with_info

    conditioner = image_conditioner(model.condition)
    if conditioner is None:
        raise UsageError(f"--source given, but this model is not image-conditioned (condition.kind: {model.kind})")
    if args.source is None:
        raise UsageError("this model is image-conditioned: give --source (an .npz of images or one image file)")
    for flag, value in (("--prompt", args.prompt), ("--label", args.label), ("--cfg", args.cfg)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to an image-conditioned model")
    gens = seeded_generators(args.seed, n if n is not None else _count(Path(args.source)))
    kwargs = {k: v for k, v in settings.items() if k != "sampler_options"}
    try:
        source, truth = _read_source(Path(args.source), conditioner, n, gens,
                                     note=(lambda text: None) if args.quiet else print)
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
    params = _parameters(args, model, x, settings)
    if is_directory(args.out):
        save_each(x, out, params)
    elif out.suffix.lower() == ".png":
        rows = [shown, x] + ([truth] if truth is not None else [])
        save_png_with_info(grid_image(rows, labels=["input", "output", "truth"][:len(rows)], aligned=True), out,
                           params[0])
    else:
        extra = {"truth": truth} if truth is not None else {}
        save_npz(out, images=x, source=shown, consistency=err, **extra)
    if args.png_folder is not None:
        save_each(x, Path(args.png_folder), params)
    print(f"{len(x)} {conditioner.task} results from {args.run} ({shown_as}) in {seconds:.1f} s; mean consistency "
          f"error with the input {err.mean().item():.4f}; wrote {out}")
    return 0


def _parameters(args: argparse.Namespace, model: Any, images: torch.Tensor, settings: dict[str, Any],
                prompts: list[str] | None = None, labels: list[int] | None = None) -> list[str]:
    """Each image's PNG info (:func:`~denoisekit.pipelines.png_info.generation_parameters`)."""
    from ..pipelines.png_info import generation_parameters

    solver = settings.get("solver")
    sampler, nfe, schedule = (("multistep", solver.nfe, "learned") if solver is not None
                              else (settings["sampler"], settings["nfe"], settings["schedule"]))
    h, w = images.shape[2:]
    return generation_parameters(model, len(images), sampler=sampler, nfe=nfe, schedule=schedule,
                                 cfg_scale=model.defaults.cfg_scale if args.cfg is None else args.cfg,
                                 cfg_rescale=args.cfg_rescale, seed=args.seed, size=(w, h), prompts=prompts,
                                 labels=labels, negative_prompt=args.negative_prompt)


def _with_loras(args: argparse.Namespace, model: Any) -> Any:
    """``model`` with the ``--lora FILE[:WEIGHT]`` adapters loaded (:mod:`denoisekit.generation.adapters`)."""
    from ..generation.adapters import parse_lora, with_loras

    try:
        return with_loras(model, [parse_lora(spec) for spec in args.lora])
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None


def _with_embeddings(args: argparse.Namespace, model: Any) -> Any:
    """``model`` with the ``--embedding FILE`` tokens; a prompt's ``<token>`` that none loads is an error."""
    from ..generation.adapters import embedding_tokens, with_embeddings
    from ..models.text_inversion import check_known_tokens

    try:
        model = with_embeddings(model, args.embedding)
        check_known_tokens(_prompts(args) or [], embedding_tokens(model))
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    return model


def _with_controls(args: argparse.Namespace, model: Any) -> Any:
    """``model`` with the ``--controlnet`` modules reading the ``--control`` images
    (:mod:`denoisekit.generation.control`)."""
    from ..data.folder import load_image
    from ..generation.control import with_controlnets

    if not args.controlnet:
        if args.control or args.control_scale is not None:
            raise UsageError("--control and --control-scale need --controlnet")
        return model
    if len(args.control) != len(args.controlnet):
        raise UsageError(f"give one --control image per --controlnet ({len(args.controlnet)}), got {len(args.control)}")
    scales = args.control_scale or [1.0]
    if len(scales) not in (1, len(args.controlnet)):
        raise UsageError(f"give one --control-scale, or one per --controlnet ({len(args.controlnet)})")
    scales = scales * len(args.controlnet) if len(scales) == 1 else scales
    images = []
    for path in args.control:
        if not Path(path).is_file():
            raise UsageError(f"--control {path!r} does not exist")
        try:
            images.append((load_image(path, None, 1) + 1) / 2)
        except OSError as e:
            raise UsageError(f"--control {path!r}: not a readable image ({e})") from None
    if len({tuple(im.shape) for im in images}) > 1:
        raise UsageError(f"the --control images differ in size: {', '.join(str(tuple(im.shape[1:])) for im in images)}")
    try:
        return with_controlnets(model, list(zip(args.controlnet, scales)), control=torch.cat(images)[None],
                                start=args.control_start, end=args.control_end)
    except (ValueError, FileNotFoundError) as e:
        named = f"--control {', '.join(args.control)}" if str(e).startswith("the control image") else "--controlnet"
        raise UsageError(f"{named}: {e}") from None


def _outputs(args: argparse.Namespace) -> Path:
    """The checked ``--out`` (``--png-folder``'s directory when only that is given)."""
    from ..pipelines.output import check_output

    if args.png_folder is not None:
        folder = Path(args.png_folder)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--png-folder {args.png_folder}: exists and is not a directory")
        if args.out is None:  # the folder is the one output
            args.out, args.png_folder = f"{folder}/", None
    if args.out is None:
        raise UsageError("give --out (a .png grid, an .npz, or a directory DIR/) or --png-folder DIR")
    try:
        return check_output(args.out)
    except ValueError as e:
        raise UsageError(f"--out: {e}") from None


def _run_sample(args: argparse.Namespace) -> int:
    from ..pipelines.generate import generate_images
    from ..train.run import load_model

    out = _outputs(args)
    model = _with_loras(args, load_model(args.run, weights=args.weights, device=resolve_device(args.device)))
    model = _with_embeddings(args, model)
    model = _with_controls(args, model)
    settings, shown_as = _settings(args, model)
    n = args.n or model.defaults.n
    if image_conditioner(model.condition) is not None or args.source is not None:
        return _restore(args, out, model, settings, shown_as, args.n)  # default: every source image
    _check_flags(args, model)
    clf = _load_classifier(args, model) if args.classifier is not None else None
    from .clip import clip_energy

    energy = clip_energy(args.clip_guidance, model)
    label = _label(args.label, model)
    start = time.perf_counter()
    try:
        with threads(args.threads or torch.get_num_threads()), torch.no_grad():
            result = generate_images(
                model, n, labels=label, prompts=_prompts(args), negative_prompt=args.negative_prompt,
                cfg_scale=args.cfg, cfg_rescale=args.cfg_rescale,
                cfg_interval=tuple(args.cfg_interval) if args.cfg_interval else None, classifier=clf,
                classifier_scale=args.classifier_scale, clip=energy, clip_scale=args.clip_guidance,
                num_labels=clf.info["config"].model.num_classes if clf is not None else None,
                seed=args.seed, batch_size=args.batch, progress=not args.quiet, **settings)
    except ValueError as e:
        raise UsageError(f"{e}") from None
    seconds = time.perf_counter() - start
    x, n = result.images, len(result.images)
    params = _parameters(args, model, x, settings, result.prompts,
                         None if result.labels is None else result.labels.tolist())
    result.save(args.out, params)
    if args.png_folder is not None:
        result.save(f"{Path(args.png_folder)}/", params)
    space = (f"; latents {'x'.join(map(str, model.image_shape))} decoded to {'x'.join(map(str, x.shape[1:]))}"
             if model.decoder is not None else "")
    scale = model.defaults.cfg_scale if args.cfg is None else args.cfg
    also = f" and {args.png_folder}/" if args.png_folder is not None else ""
    print(f"{n} images from {args.run} ({shown_as}, cfg {scale:g}) in {seconds:.1f} s ({n / seconds:.1f} "
          f"images/s{space}); wrote {out}{also}")
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
    p.add_argument("--cfg", type=guidance_scale, default=None,
                   help="guidance scale the solver is fitted at (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="tuning noise i uses seed + i")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help=WEIGHTS_HELP)
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    add_device(p)


def _run_tune(args: argparse.Namespace) -> int:
    from ..generation import Guidance, default_guidance
    from ..pipelines.tune import BASELINE, tune_solver
    from ..samplers.tuning.solver import save_solver
    from ..train.run import load_model

    if args.iters < 0:
        raise UsageError(f"--iters must be >= 0, got {args.iters}")
    model = load_model(args.run, weights=args.weights, device=resolve_device(args.device))
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
    from ..eval.reference import accepted

    p.add_argument("samples", help=".npz written by 'denoisekit sample' (images, labels)")
    p.add_argument("--ref", default=None, metavar="SPEC",
                   help=f"the real images: {accepted()} (default digits; with --clip alone: no FID)")
    p.add_argument("--features", default="auto",
                   help="feature network: auto (the built-in one of digits/shapes, else selfsup), selfsup (trained "
                        "on --ref itself, cached by its hash), digits, shapes, or inception (needs --inception)")
    p.add_argument("--inception", default=None, help="local FID Inception weights (pt_inception-2015-12-05)")
    p.add_argument("--ref-limit", type=positive_int, default=None, metavar="N",
                   help="read at most N reference images (default: all, 2000 of a procedural set such as shapes)")
    p.add_argument("--selfsup", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the self-supervised network, repeatable (e.g. --selfsup steps=100; see "
                        "denoisekit.eval.selfsup.SelfSupConfig)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    add_device(p)
    p.add_argument("--clip", nargs="?", const="cache", default=None, metavar="DIR",
                   help="CLIP score and R-precision of samples with prompts, by the cached CLIP ('make clip') or the "
                        "one trained into DIR ('denoisekit clip --out DIR')")


def _selfsup_config(items: list[str]) -> Any:
    import dataclasses

    from ..eval.selfsup import SelfSupConfig

    options = key_values(items, "--selfsup")
    names = [f.name for f in dataclasses.fields(SelfSupConfig)]
    for key in options:
        if key not in names:
            raise UsageError(f"--selfsup: unknown key {key!r}; allowed: {', '.join(names)}")
    return SelfSupConfig(**options)


def _run_eval(args: argparse.Namespace) -> int:
    from ..eval.report import evaluate, format_metrics

    if not Path(args.samples).is_file():
        raise FileNotFoundError(f"samples file {args.samples!r} does not exist")
    metrics: dict[str, Any] = {}
    if args.clip is None or args.ref is not None:
        metrics = evaluate(args.samples, ref=args.ref or "digits", features=args.features, inception=args.inception,
                           ref_limit=args.ref_limit, selfsup=_selfsup_config(args.selfsup),
                           device=resolve_device(args.device))
        print(format_metrics(metrics))
    if args.clip is not None:
        from .clip import eval_clip

        metrics["clip"] = eval_clip(args.samples, args.clip)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


# ------------------------------------------------------------------------------------------ report

def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory with metrics.json (from 'denoisekit eval --json')")


def _total_training_time(run: Path, log: list[dict[str, Any]]) -> float:
    """The run's training seconds over every resume: ``elapsed_s`` of its latest checkpoint's state.json (the
    engine carries it across resumes), else of the last log row."""
    from ..engine.checkpoint import STATE_FILE, latest_checkpoint
    from ..io import load_json
    from ..train.run import CHECKPOINTS

    ckpt = latest_checkpoint(run / CHECKPOINTS)
    if ckpt is not None and "elapsed_s" in (state := load_json(ckpt / STATE_FILE)):
        return float(state["elapsed_s"])
    return float(log[-1]["elapsed_s"]) if log else float("nan")


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
    rows = [("FID", "fid"), ("KID", "kid"), ("precision", "precision"), ("recall", "recall"),
            ("density", "density"), ("coverage", "coverage"), ("classifier accuracy of samples", "classifier_accuracy"),
            ("classifier accuracy of real images", "ref_classifier_accuracy"), ("class coverage", "class_coverage")]
    floor = m.get("floor", {})
    table = "\n".join(f"| {name} | {m[k]:.4g} | {floor[k]:.4g} |" if k in floor else f"| {name} | {m[k]:.4g} | |"
                      for name, k in rows if isinstance(m.get(k), (int, float)))
    log = read_log_rows(run / "log.csv")
    elapsed = _total_training_time(run, log)
    text = f"""# Run report: {run.name}

{config.data.name} ({'x'.join(map(str, info['image_shape']))}), {config.model.name}, process {config.process.name},
prediction {config.process.prediction}; {info['step']} steps of batch {config.train.batch_size} in {elapsed:.0f} s
(final logged loss {float(log[-1]['loss']):.4f}).

![samples](samples.png)

One row per class, sampled with {config.sample.sampler} at {config.sample.nfe} NFE and guidance scale
{config.sample.cfg_scale:g}.

![loss](loss.png)

Features: {m.get('feature_network', 'unknown network')}. The real-vs-real floor is the same metric between two
disjoint halves of the reference ({m.get('ref', '?')}), as many images each as the samples' comparison.

| metric ({m.get('n_compared', m.get('n_samples'))} samples vs {m.get('n_ref_kept', m.get('n_ref'))} real) | value | real-vs-real floor |
|---|---|---|
{table}
"""
    write_text_atomic(run / "report.md", text)
    print(f"wrote {run / 'report.md'}")
    return 0


COMMANDS = {
    "train": ("train an image model from a YAML config", _add_train, _run_train),
    "sample": ("sample a trained run to a PNG grid or an .npz", _add_sample, _run_sample),
    "tune": ("fit a learned solver (grid and weights) to a run's model for 'sample --solver'", _add_tune, _run_tune),
    "eval": ("FID, KID, precision/recall of samples against a reference; --clip: CLIP score, R-precision",
             _add_eval, _run_eval),
    "report": ("write report.md for a run from its metrics.json", _add_report, _run_report),
}
