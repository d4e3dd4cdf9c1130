"""``denoisekit edit``, ``inpaint`` and ``restore``: a trained run as the prior for editing and inverse problems.

    denoisekit edit RUN --input sketch.png --strength 0.6 [--prompt "..."] --out edit.png       # SDEdit
    denoisekit inpaint RUN --input img.png --mask mask.png --method repaint --out filled.png   # or dps, diffpir, daps
    denoisekit restore RUN --input img.png --task sr4 --noise 0.05 --method daps --out sr.png   # or pinv, dps, diffpir
    denoisekit invert RUN --input img.png --prompt "a large red circle" --null-text --out inv.png  # PSNR per row
    denoisekit p2p RUN --prompt "a large red circle" --edit "a large blue circle" [--input img.png] --out p2p.png

``invert`` and ``p2p`` (prompt-to-prompt; text runs) support pixel and latent runs (a real input is encoded).

Each writes the input, the measurement and the result side by side (a labelled .png grid) or an .npz. Inputs:
an image file, or an .npz of uint8 ``images`` (N, H, W[, C]); a mask: an image file (white = missing) or an .npz
``mask`` (N or 1, H, W), 1 = missing. ``edit`` supports pixel and latent runs (the autoencoder encodes the
input); ``inpaint`` and ``restore`` need a pixel run. Every input is checked before anything is written.
Each command is one ``_add_X`` / ``_run_X`` pair in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (THREADS_HELP, UsageError, add_device, check_image_out, load_run_model, npz_images, positive_int,
                     threads)

#: ``--weights`` of the commands that load a run.
WEIGHTS_HELP = "ema: the EMA of the weights (default), model: the raw trained weights"


def _bounded(what: str, lo: float, hi: float = float("inf"), note: str = "") -> Any:
    """An argparse type: a number in ``[lo, hi]``, else one line naming ``what`` and the range."""
    allowed = f"in [{lo:g}, {hi:g}]" if hi != float("inf") else f">= {lo:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {allowed}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be {allowed}{note}, got {text}")
        return value

    return parse


_strength = _bounded("the strength", 0.0, 1.0, " (0: the input, 1: a new sample)")
_noise = _bounded("the measurement noise", 0.0)


def _add_common(p: argparse.ArgumentParser, *, nfe: int) -> None:
    p.add_argument("run", help="run directory written by 'denoisekit train'")
    p.add_argument("--input", required=True, help="an image file, or an .npz of uint8 'images' (N, H, W[, C])")
    p.add_argument("--out", required=True, help="a .png grid (input, measurement, result) or an .npz")
    p.add_argument("--nfe", type=positive_int, default=nfe, help=f"model evaluations per image (default {nfe})")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help=WEIGHTS_HELP)
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    add_device(p)


def _pixel_shape(model: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images the run makes (decoded, for a latent run)."""
    if model.decoder is None:
        return tuple(model.image_shape)
    from ..generation.model import decode

    return tuple(decode(model.decoder, torch.zeros(1, *model.image_shape)).shape[1:])


def read_images(path_text: str, channels: int, flag: str = "--input") -> torch.Tensor:
    """``(N, C, H, W)`` in ``[-1, 1]`` from an image file or an .npz ``images`` array, with ``channels``."""
    from ..data.folder import load_image

    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{flag} {str(path)!r} does not exist")
    if path.suffix.lower() == ".npz":
        with np.load(path) as f:
            x = npz_images("--input", path.name, "images", {k: f[k] for k in f.files})
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
        return x
    try:
        return load_image(str(path), None, 1 if channels == 1 else 3)[None]
    except OSError as e:
        raise UsageError(f"{flag} {str(path)!r}: not a readable image ({e})") from None


def _check_size(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape[2:]) != tuple(shape[1:]):
        raise UsageError(f"{what} is {x.shape[3]}x{x.shape[2]}; this run makes {shape[2]}x{shape[1]} images")


def read_mask(path_text: str, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``(N or 1, 1, H, W)`` float mask, 1 = missing, with missing and known pixels in each."""
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--mask {str(path)!r} does not exist")
    if path.suffix.lower() == ".npz":
        with np.load(path) as f:
            if "mask" not in f.files:
                raise UsageError(f"--mask {path.name}: expected a 'mask' array (N, H, W), 1 = missing")
            a = np.asarray(f["mask"], dtype=np.float32)
        m = torch.as_tensor(a.reshape(-1, 1, *a.shape[-2:]) > 0.5).float()
    else:
        m = (read_images(path_text, 1, "--mask") > 0).float()  # white (> mid-grey) = missing
    _check_size(m, shape, f"--mask {path.name}")
    if len(m) not in (1, n):
        raise UsageError(f"--mask {path.name} has {len(m)} masks for {n} images (give 1 or {n})")
    missing = m.flatten(1).sum(1)
    if bool((missing == 0).any()):
        raise UsageError(f"--mask {path.name} has no missing pixels (white or 1 = missing): nothing to inpaint")
    if bool((missing == m[0].numel()).any()):
        raise UsageError(f"--mask {path.name} has no known pixels: use 'denoisekit sample' for a new image")
    return m


def _write(out: Path, rows: list[torch.Tensor], labels: list[str]) -> None:
    """Aligned labelled rows as a PNG grid, or an .npz with one uint8 array per row (named by its label's first
    word)."""
    from ..eval.plotting import save_grid
    from ..pipelines.output import save_npz

    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.clamp(-1, 1) for r in rows]
    if out.suffix.lower() == ".png":
        save_grid(rows, out, labels=labels, aligned=True)
    else:
        save_npz(out, **{label.split(" ")[0]: r for label, r in zip(labels, rows)})


# -------------------------------------------------------------------------------------------- edit

def _add_edit(p: argparse.ArgumentParser) -> None:
    _add_common(p, nfe=20)
    p.add_argument("--strength", type=_strength, default=0.6,
                   help="how far to noise the input, in [0, 1]: the fraction of the sampling grid run "
                        "(0: the input itself, 1: a new sample; default 0.6)")
    p.add_argument("--prompt", default=None, help="text prompt of the edit (text runs)")
    p.add_argument("--label", default=None, help="class index of the edit (class runs)")
    p.add_argument("--sampler", default=None, help="sampler (default: the run's; see 'denoisekit list')")
    p.add_argument("--n", type=positive_int, default=1, help="edits per input image (seeds seed, seed + 1, ...)")


def _run_edit(args: argparse.Namespace) -> int:
    from ..pipelines.generate import user_condition
    from ..pipelines.sdedit import sdedit

    out = check_image_out(args.out)
    model = load_run_model(args)
    shape = _pixel_shape(model)
    x = read_images(args.input, shape[0])
    _check_size(x, shape, f"--input {Path(args.input).name}")
    n = len(x) * args.n
    images = x.repeat_interleave(args.n, 0)
    label = None if args.label is None else int(args.label) if args.label.isdigit() else args.label
    cond, _ = user_condition(model, n, labels=label, prompts=[args.prompt] if args.prompt else None)
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()), torch.no_grad():
        result = sdedit(model, images, args.strength, cond=cond, sampler=args.sampler, nfe=args.nfe, seed=args.seed)
    seconds = time.perf_counter() - start
    result = result.clamp(-1, 1).cpu()
    if not torch.isfinite(result).all():
        raise FloatingPointError("the edits contain NaN or inf")
    _write(out, [images, result], ["input", f"edit (strength {args.strength:g})"])
    dist = (result - images).flatten(1).pow(2).mean(1).sqrt().mean().item()
    print(f"{n} edits of {args.input} at strength {args.strength:g} in {seconds:.1f} s (RMS change {dist:.3f}); "
          f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------------- inpaint, restore

def _add_method(p: argparse.ArgumentParser, default: str, methods: tuple[str, ...]) -> None:
    p.add_argument("--method", default=default, choices=methods, help=f"restoration method (default {default})")
    p.add_argument("--noise", type=_noise, default=0.0,
                   help="measurement noise sigma_y: added to a clean input here, and the level the methods assume")


def _restore_and_write(args: argparse.Namespace, model: Any, out: Path, operator: Any, truth: torch.Tensor | None,
                       measurement: torch.Tensor, shown: torch.Tensor) -> int:
    from ..pipelines.inverse import data_residual, restore

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()), torch.no_grad():
        res = restore(model, operator, measurement, args.method, sigma_y=args.noise, nfe=args.nfe, seed=args.seed)
    seconds = time.perf_counter() - start
    rows = ([truth] if truth is not None else []) + [shown, res.images]
    labels = (["input"] if truth is not None else []) + ["measurement", f"{args.method} ({res.nfe} NFE)"]
    _write(out, rows, labels)
    resid = data_residual(operator, res.images, measurement.cpu()).mean().item()
    extra = ""
    if truth is not None:
        mse = (res.images - truth).flatten(1).pow(2).mean(1).clamp(min=1e-10)
        extra = f"; PSNR {(10 * torch.log10(4 / mse)).mean().item():.2f} dB to the input"
    print(f"{len(res.images)} {args.method} results in {seconds:.1f} s ({res.nfe} NFE); data residual {resid:.4f} "
          f"(sigma_y {args.noise:g}){extra}; wrote {out}")
    return 0


def _add_inpaint(p: argparse.ArgumentParser) -> None:
    _add_common(p, nfe=100)
    p.add_argument("--mask", default=None,
                   help="mask image (white = missing) or .npz 'mask' (1 = missing); without it, an input smaller than "
                        "the run's images is outpainted (placed in the centre of the canvas)")
    _add_method(p, "repaint", ("repaint", "dps", "diffpir", "daps", "pinv"))


def _prior_and_input(args: argparse.Namespace) -> tuple[Path, Any, tuple[int, ...], torch.Tensor]:
    """``--out``, the run (a prior for ``--method``), its image shape and ``--input``'s images."""
    from ..pipelines.inverse import check_prior

    out = check_image_out(args.out)
    model = load_run_model(args)
    check_prior(model, args.method)
    shape = tuple(model.image_shape)
    return out, model, shape, read_images(args.input, shape[0])


def _run_inpaint(args: argparse.Namespace) -> int:
    from .._utils import seeded_generators
    from ..data.operators import Inpaint
    from ..pipelines.repaint import extend_canvas

    out, model, shape, x = _prior_and_input(args)
    if args.mask is None:
        if tuple(x.shape[2:]) == shape[1:]:
            raise UsageError(f"--input {Path(args.input).name} is the run's size: give --mask (or a smaller image to "
                             f"outpaint)")
        if x.shape[2] > shape[1] or x.shape[3] > shape[2]:
            raise UsageError(f"--input {Path(args.input).name} is {x.shape[3]}x{x.shape[2]}, larger than the run's "
                             f"{shape[2]}x{shape[1]} images")
        x, mask = extend_canvas(x, shape[1:])
    else:
        _check_size(x, shape, f"--input {Path(args.input).name}")
        mask = read_mask(args.mask, len(x), shape)
    op = Inpaint(mask)
    meas = op.measure(x, args.noise, seeded_generators(args.seed + 10**6, len(x)))
    return _restore_and_write(args, model, out, op, None if args.mask is None else x, meas, meas)


def _add_restore(p: argparse.ArgumentParser) -> None:
    from ..data.operators import TASKS

    _add_common(p, nfe=100)
    p.add_argument("--task", required=True, choices=TASKS,
                   help="the degradation: inpaint-box (centre quarter), inpaint-random (70%% of the pixels), sr2 / sr4 "
                        "(average pooling), blur (Gaussian, sigma 1 px), motion (5 px at 30 degrees)")
    _add_method(p, "dps", ("dps", "diffpir", "daps", "pinv", "repaint"))
    p.add_argument("--measured", action="store_true",
                   help="the input is the measurement itself (a blurred image); a low-resolution input for sr2 / sr4 "
                        "is taken as measured without it")


def _run_restore(args: argparse.Namespace) -> int:
    from .._utils import seeded_generators
    from ..data.operators import task_operator

    out, model, shape, x = _prior_and_input(args)
    gens = seeded_generators(args.seed + 10**6, len(x))
    op = task_operator(args.task, shape[1:], n=len(x), generator=gens)
    low = args.task in ("sr2", "sr4") and tuple(x.shape[2:]) == tuple(s // int(args.task[2:]) for s in shape[1:])
    if low or args.measured:
        if not low:
            _check_size(x, shape, f"--input {Path(args.input).name}")
        truth, meas = None, x
    else:
        _check_size(x, shape, f"--input {Path(args.input).name}")
        truth, meas = x, op.measure(x, args.noise, gens)
    shown = meas if tuple(meas.shape[1:]) == shape else op.pinv(meas)  # a low-resolution one up-sampled
    return _restore_and_write(args, model, out, op, truth, meas, shown)


# ------------------------------------------------------------------------------------------ invert, p2p

def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (a fraction of the steps), got {text}")
    return value


def _add_inversion_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale of the reconstruction or edit (default: the run's)")
    p.add_argument("--inner-steps", type=int, default=10,
                   help="null-text optimisation steps per DDIM step (Mokady et al. 2023: 10; 0: plain DDIM inversion)")


def _model_space(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Images as what the denoiser makes: latents of a latent run (the autoencoder's mean), else the images."""
    if model.decoder is None:
        return x.to(model.device)
    p = next(model.decoder.parameters())
    with torch.no_grad():
        return model.decoder.encode_latents(x.to(p.device, p.dtype)).to(model.device)


def _images_of(model: Any, y: torch.Tensor) -> torch.Tensor:
    from ..generation.model import decode

    return (decode(model.decoder, y) if model.decoder is not None else y).clamp(-1, 1).cpu()


def _read_real(args: argparse.Namespace, model: Any) -> torch.Tensor:
    shape = _pixel_shape(model)
    x = read_images(args.input, shape[0])
    _check_size(x, shape, f"--input {Path(args.input).name}")
    return x


def _add_invert(p: argparse.ArgumentParser) -> None:
    _add_common(p, nfe=50)
    p.add_argument("--prompt", default=None, help="the input's caption (text runs; default the empty prompt)")
    p.add_argument("--label", type=int, default=None, help="the input's class (class runs)")
    p.add_argument("--null-text", action="store_true",
                   help="also null-text inversion (Mokady et al. 2023; text runs): the guided reconstruction then "
                        "follows the unguided inversion")
    _add_inversion_options(p)


def _run_invert(args: argparse.Namespace) -> int:
    from ..pipelines.inversion import ddim_invert, inversion_grid, model_conditions, null_text_inversion, reconstruct
    from ..train.autoencoder_eval import psnr

    out = check_image_out(args.out)
    model = load_run_model(args)
    if args.null_text and model.kind != "text":
        raise UsageError(f"--null-text needs a text run; {args.run} is conditioned on {model.kind!r}")
    if args.inner_steps < 0:
        raise UsageError(f"--inner-steps must be >= 0, got {args.inner_steps}")
    x = _read_real(args, model)
    labels = None if args.label is None else torch.full((len(x),), args.label)
    cond, uncond = model_conditions(model, [args.prompt] if args.prompt else None, labels, n=len(x))
    w = (model.defaults.cfg_scale if model.guided else 1.0) if args.cfg is None else args.cfg
    grid = inversion_grid(model, args.nfe)
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        y = _model_space(model, x)
        inv = ddim_invert(model.denoiser, y, grid, cond, uncond)
        rows, labels_out = [x], ["input"]
        for scale in dict.fromkeys((1.0, w)):
            rows.append(_images_of(model, reconstruct(model.denoiser, inv, scale=scale)))
            labels_out.append(f"w={scale:g} DDIM")
        if args.null_text:
            tuned = null_text_inversion(model.denoiser, y, grid, cond, uncond, scale=w, inner_steps=args.inner_steps)
            rows.append(_images_of(model, reconstruct(model.denoiser, tuned)))
            labels_out.append(f"null-text w={w:g}")
    seconds = time.perf_counter() - start
    scores = [psnr(r, x).mean().item() for r in rows[1:]]
    labels_out = labels_out[:1] + [f"{label} ({db:.1f} dB)" for label, db in zip(labels_out[1:], scores)]
    _write(out, rows, labels_out)
    print(f"inverted {len(x)} image(s) of {args.input} in {args.nfe} DDIM steps ({seconds:.1f} s); reconstruction "
          f"PSNR: " + ", ".join(f"{label}" for label in labels_out[1:]) + f"; wrote {out}")
    return 0


def _add_p2p(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a text run directory written by 'denoisekit train'")
    p.add_argument("--prompt", required=True, help="the source prompt (of the --input image, if given)")
    p.add_argument("--edit", required=True, help="the edited prompt")
    p.add_argument("--mode", default="replace", choices=("replace", "refine", "reweight"),
                   help="replace: a word swapped (same token count); refine: words added; reweight: --weight WORD=C "
                        "scales a word's attention (default replace)")
    p.add_argument("--weight", action="append", metavar="WORD=C", help="reweight: a word of --edit and its scale")
    p.add_argument("--blend", action="append", metavar="WORD[:EDIT_WORD]",
                   help="local blending: change only where these words attend (a source word, and the edit's word "
                        "in its place when it differs), repeatable")
    p.add_argument("--input", default=None, help="a real image to edit (null-text inverted first), else generated")
    p.add_argument("--out", required=True, help="a .png grid (source, edit) or an .npz")
    p.add_argument("--n", type=positive_int, default=4, help="generated pairs (seeds seed, seed + 1, ...; default 4)")
    p.add_argument("--nfe", type=positive_int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--cross-steps", type=_fraction, default=0.8,
                   help="fraction of the steps (from the start) with the source's cross-attention (default 0.8)")
    p.add_argument("--self-steps", type=_fraction, default=0.4,
                   help="fraction of the steps with the source's self-attention (default 0.4)")
    p.add_argument("--seed", type=int, default=0, help="pair i uses seed + i")
    _add_inversion_options(p)
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help=WEIGHTS_HELP)
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    add_device(p)


def _word_weights(items: list[str] | None) -> dict[str, float] | None:
    from .common import key_values

    weights = key_values(items, "--weight")
    for word, c in weights.items():
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise UsageError(f"--weight {word}={c!r}: the scale must be a number")
    return {k: float(v) for k, v in weights.items()} or None


def _run_p2p(args: argparse.Namespace) -> int:
    from ..pipelines.inversion import ddim_invert, inversion_grid, model_conditions, null_text_inversion
    from ..pipelines.p2p import plan_edit, prompt_to_prompt

    out = check_image_out(args.out)
    weights = _word_weights(args.weight)
    blend = None
    if args.blend:
        pairs = [b.split(":", 1) if ":" in b else [b, b] for b in args.blend]
        blend = ([s for s, _ in pairs], [e for _, e in pairs])
    model = load_run_model(args)
    if model.kind != "text":
        raise UsageError(f"p2p needs a text run; {args.run} is conditioned on {model.kind!r}")
    if args.inner_steps < 0:
        raise UsageError(f"--inner-steps must be >= 0, got {args.inner_steps}")
    w = model.defaults.cfg_scale if args.cfg is None else args.cfg
    options = {"mode": args.mode, "scale": w, "steps": args.nfe, "cross_steps": args.cross_steps,
               "self_steps": args.self_steps, "weights": weights, "blend": blend, "seed": args.seed}
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        plan_edit(model, args.prompt, args.edit, mode=args.mode, weights=weights, blend=blend)  # before any work
        inversion = None
        if args.input is not None:
            x = _read_real(args, model)
            y, grid = _model_space(model, x), inversion_grid(model, args.nfe)
            cond, null = model_conditions(model, [args.prompt], n=len(x))
            inversion = (null_text_inversion(model.denoiser, y, grid, cond, null, scale=w, inner_steps=args.inner_steps)
                         if args.inner_steps else ddim_invert(model.denoiser, y, grid, cond, null))
        result = prompt_to_prompt(model, args.prompt, args.edit, n=args.n, inversion=inversion, **options)
    seconds = time.perf_counter() - start
    rows = [result.source.clamp(-1, 1).cpu(), result.edit.clamp(-1, 1).cpu()]
    labels = [f"source ({args.prompt}{', reconstructed' if inversion is not None else ''})",
              f"edit ({args.edit}, {args.mode})"]
    if inversion is not None:
        rows, labels = [x] + rows, ["input"] + labels
    _write(out, rows, labels)
    print(f"{len(result.edit)} prompt-to-prompt edit(s) '{args.prompt}' -> '{args.edit}' ({args.mode}, w={w:g}, "
          f"{args.nfe} steps) in {seconds:.1f} s; wrote {out}")
    return 0


COMMANDS = {
    "edit": ("SDEdit: noise an image to --strength and sample it back with a run", _add_edit, _run_edit),
    "inpaint": ("inpaint or outpaint an image with a run as the prior (RePaint, DPS, DiffPIR, DAPS)",
                _add_inpaint, _run_inpaint),
    "restore": ("restore a degraded image (super-resolution, deblurring, inpainting) with a run as the prior",
                _add_restore, _run_restore),
    "invert": ("DDIM-invert an image (optionally null-text inversion) and reconstruct it, with PSNR",
               _add_invert, _run_invert),
    "p2p": ("prompt-to-prompt: edit a generated or real image by editing its prompt (replace, refine, reweight)",
            _add_p2p, _run_p2p),
}
