"""``denoisekit panorama`` and ``anagram``: joint denoising with a trained pixel run.

    denoisekit panorama RUN --width 128 --label 3 --out pano.png                     # MultiDiffusion
    denoisekit panorama RUN --width 128 --prompt "..." --loop --method syncdiffusion --out pano.png
    denoisekit panorama RUN --width 64 --regions masks.png --label 1 --label 7 --out regions.png
    denoisekit anagram RUN --label 6 --label 9 --view flip --out anagram.png         # or --prompt A --prompt B

``panorama`` denoises a canvas wider (``--width``) or taller (``--height``) than the run's images as
overlapping windows every ``--stride`` pixels averaged at each step (Bar-Tal et al. 2023); ``--loop`` closes
it round its width (a 360-degree panorama); ``--method naive`` tiles independent images (stride = window),
``syncdiffusion`` adds Lee et al.'s coherence gradient toward the first window (``--sync-scale``, with
``--features``); ``--average`` is SyncTweedies' choice of what is averaged (x0, eps or x_t). ``--regions``
(an image whose distinct colours are the regions, in order of first appearance in row-major order, or an
.npz ``masks`` (R, H, W)) gives each region its own ``--prompt`` / ``--label``. ``anagram`` makes one image
that reads as the first prompt upright and as the next through ``--view`` (Geng et al. 2024). Each writes a
labelled .png grid or an .npz; every input is checked before anything is computed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (THREADS_HELP, UsageError, add_device, check_image_out, guidance_scale, load_run_model, positive_int,
                     threads)
from .edit import WEIGHTS_HELP

FEATURES = ("auto", "pixels", "digits", "shapes")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by 'denoisekit train' (a pixel run)")
    p.add_argument("--out", required=True, help="a labelled .png grid or an .npz of the images")
    p.add_argument("--prompt", action="append", default=None, help="text prompt (text runs; repeat: one per region "
                                                                    "or view)")
    p.add_argument("--label", action="append", default=None, help="class index or name (class runs; repeat: one "
                                                                   "per region or view)")
    p.add_argument("--n", type=positive_int, default=4, help="images (seeds seed, seed + 1, ...; default 4)")
    p.add_argument("--nfe", type=positive_int, default=None, help="sampling steps' evaluations (default the run's)")
    p.add_argument("--sampler", default=None, help="sampler (default: the run's; see 'denoisekit list')")
    p.add_argument("--cfg", type=guidance_scale, default=None, help="classifier-free guidance scale per view "
                                                                     "(default: the run's)")
    p.add_argument("--average", default="x0", choices=("x0", "eps", "xt"),
                   help="what is averaged in the canvas (SyncTweedies): x0 (Tweedie's estimate, default), eps (the "
                        "noise estimate) or xt (each view's next state, DDIM with --eta)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta of --average xt (default 0: deterministic)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help=WEIGHTS_HELP)
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    add_device(p)


def _conditions(args: argparse.Namespace, model: Any, count: int, what: str) -> tuple[list[Any], list[str]]:
    """One condition per region or view (``count``), from ``--prompt`` (text runs) or ``--label`` (class runs),
    and their names for the grid's labels."""
    from ..pipelines.generate import resolve_label

    prompts, labels = args.prompt or [], args.label or []
    if model.kind == "text":
        if labels:
            raise UsageError("--label given, but this run is text-conditional (use --prompt)")
        given, flag = prompts, "--prompt"
    elif model.num_classes is not None:
        if prompts:
            raise UsageError(f"--prompt given, but this run is conditioned on {model.kind!r} (use --label)")
        given, flag = labels, "--label"
    else:
        if prompts or labels:
            raise UsageError(f"--prompt / --label given, but this run is unconditional ({model.kind!r})")
        if count != 1:
            raise UsageError(f"{what} need one condition each, but this run is unconditional")
        return [None], ["unconditional"]
    if len(given) != count:
        raise UsageError(f"{len(given)} {flag} for {count} {what}: give one {flag} per {what[:-1]}")
    if flag == "--prompt":
        return list(given), list(given)
    conds, names = [], []
    for text in given:
        try:
            c = resolve_label(text, model.classes, model.num_classes)
        except ValueError as e:
            raise UsageError(f"--{e}") from None
        if not isinstance(c, int) or not 0 <= c < model.num_classes:
            raise UsageError(f"--label {text!r}: give one class of this run (0..{model.num_classes - 1} or a name)")
        conds.append(c)
        names.append(model.classes[c] if c < len(model.classes) else f"class {c}")
    return conds, names


def _guidance(args: argparse.Namespace, model: Any) -> Any:
    from ..generation import Guidance, default_guidance

    if args.cfg is None:
        return default_guidance(model)
    if args.cfg != 1 and not model.guided:
        raise UsageError("--cfg needs a class- or text-conditional run")
    return Guidance(cfg_scale=args.cfg)


def _features(name: str, model: Any) -> Any:
    """SyncDiffusion's perceptual features: a feature network of the project (the paper's LPIPS), or pooled
    pixels; ``auto``: the network of the run's dataset when there is one, else pixels."""
    from ..pipelines.joint import pixel_features

    channels = model.image_shape[0]
    if name == "auto":
        data = str(getattr(getattr(model.config, "data", None), "name", "") or "")
        name = ("digits" if data == "digits" and channels == 1 else
                "shapes" if data.startswith("shapes") and channels == 3 else "pixels")
    if name == "pixels":
        return pixel_features
    if name == "digits":
        from ..eval.features import digits_feature_network as make
    else:
        from ..eval.alignment import shapes_feature_network as make
    net = make().eval().to(model.device)
    if net.in_channels != channels:
        raise UsageError(f"--features {name}: its network reads {net.in_channels}-channel images, the run makes "
                         f"{channels}")
    net.requires_grad_(False)
    return net.features


def _save(out: Path, groups: list[torch.Tensor], labels: list[str], keys: list[str], columns: int | None = None) -> None:
    """Labelled groups as a PNG grid, or an .npz with one uint8 array per group (``keys``)."""
    from ..eval.plotting import save_grid
    from ..pipelines.output import save_npz

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        h, w = groups[0].shape[2:]
        save_grid(groups, out, labels=labels, aligned=len(groups) > 1, columns=columns,
                  min_cell=max(32, -(-32 * w // h)))  # rows at least 32 px high, however wide
    else:
        save_npz(out, **dict(zip(keys, groups)))


def _run(args: argparse.Namespace, model: Any, terms: list[Any], **options: Any) -> tuple[torch.Tensor, float]:
    from ..pipelines.joint import joint_sample

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        x = joint_sample(model, terms, args.n, average=args.average, guidance=_guidance(args, model),
                         sampler=args.sampler, nfe=args.nfe, eta=args.eta, seed=args.seed, **options)
    x = x.clamp(-1, 1).cpu()
    if not torch.isfinite(x).all():
        raise FloatingPointError("the images contain NaN or inf")
    return x, time.perf_counter() - start


# ------------------------------------------------------------------------------------------ panorama

def _add_panorama(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--width", type=positive_int, default=None, help="canvas width in pixels (default: the run's)")
    p.add_argument("--height", type=positive_int, default=None, help="canvas height in pixels (default: the run's)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="pixels between windows, at most the run's image size (default half of it)")
    p.add_argument("--loop", action="store_true", help="close the canvas round its width (360-degree panorama)")
    p.add_argument("--method", default="multidiffusion", choices=("naive", "multidiffusion", "syncdiffusion"),
                   help="naive: independent tiles (stride = window); multidiffusion: overlapping windows averaged "
                        "(default); syncdiffusion: plus a coherence gradient toward the first window")
    p.add_argument("--sync-scale", type=float, default=1.0,
                   help="SyncDiffusion's gradient weight w (default 1; it enters x0 as w sigma^2 grad, as classifier "
                        "guidance does, so the paper's 20 for an x_t step is not the same scale)")
    p.add_argument("--features", default="auto", choices=FEATURES,
                   help="SyncDiffusion's perceptual features: the run's dataset's feature network (auto), pooled "
                        "pixels, or a named network")
    p.add_argument("--regions", default=None, help="region masks: an image of the canvas's size whose distinct "
                                                   "colours are the regions, or an .npz 'masks' (R, H, W)")


def read_regions(path_text: str, canvas: tuple[int, int]) -> torch.Tensor:
    """``(R, H, W)`` float masks from ``--regions``: an .npz ``masks`` or an image's distinct colours (regions
    in order of first appearance, row-major)."""
    from PIL import Image

    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--regions {str(path)!r} does not exist")
    if path.suffix.lower() == ".npz":
        with np.load(path) as f:
            if "masks" not in f.files:
                raise UsageError(f"--regions {path.name}: expected a 'masks' array (R, H, W)")
            masks = torch.as_tensor(np.asarray(f["masks"], dtype=np.float32))
        if masks.ndim != 3:
            raise UsageError(f"--regions {path.name}: 'masks' must be (R, H, W), got shape {tuple(masks.shape)}")
    else:
        try:
            a = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise UsageError(f"--regions {str(path)!r}: not a readable image ({e})") from None
        flat = a.reshape(-1, 3)
        _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # colours in order of first appearance
        masks = torch.stack([torch.as_tensor(inverse.reshape(-1) == k) for k in order]).float()
        masks = masks.view(len(order), *a.shape[:2])
    if tuple(masks.shape[1:]) != canvas:
        raise UsageError(f"--regions {path.name} is {masks.shape[2]}x{masks.shape[1]}; the canvas is "
                         f"{canvas[1]}x{canvas[0]} (--width x --height)")
    return masks


def _run_panorama(args: argparse.Namespace) -> int:
    from ..pipelines.joint import Term, check_pixel_model, region_terms, seam_ratio
    from ..pipelines.views import windows

    out = check_image_out(args.out)
    model = load_run_model(args)
    c, h, w = check_pixel_model(model)
    canvas = (args.height or h, args.width or w)
    if args.method == "naive":
        if args.stride is not None and args.stride != min(h, w):
            raise UsageError("--method naive tiles the canvas (stride = window): give no --stride")
        stride: Any = (h, w)
    else:
        stride = args.stride or max(1, min(h, w) // 2)
    views = windows(canvas, (h, w), stride, loop=args.loop)
    if args.regions is not None:
        masks = read_regions(args.regions, canvas)
        conds, names = _conditions(args, model, len(masks), "regions")
        terms = region_terms(views, masks, conds)
    else:
        conds, names = _conditions(args, model, 1, "prompts")
        terms = [Term(v, conds[0]) for v in views]
    sync = args.method == "syncdiffusion"
    if sync and args.average == "xt":
        raise UsageError("--method syncdiffusion averages x0 or eps: not --average xt")
    if args.sync_scale < 0:
        raise UsageError(f"--sync-scale must be >= 0, got {args.sync_scale}")
    options = {"sync_scale": args.sync_scale, "features": _features(args.features, model)} if sync else {}
    x, seconds = _run(args, model, terms, **options)
    label = f"{args.method}{' loop' if args.loop else ''} ({', '.join(names)})"
    _save(out, [x], [label], ["images"], columns=1)
    edges = sorted({(v + w - 1) % canvas[1] for v in range(0, canvas[1], w)} - {canvas[1] - 1})
    seam = f"; seam ratio {seam_ratio(x, edges):.2f} at the tile borders" if edges else ""
    print(f"{len(x)} {canvas[1]}x{canvas[0]} panoramas ({args.method}, {len(views)} windows, average "
          f"{args.average}) in {seconds:.1f} s{seam}; wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------- anagram

def _add_anagram(p: argparse.ArgumentParser) -> None:
    from ..pipelines.views import ANAGRAM_VIEWS

    _add_common(p)
    p.add_argument("--view", action="append", default=None, choices=[v for v in ANAGRAM_VIEWS if v != "identity"],
                   help="the transform under which the next prompt reads (once, or once per prompt after the first)")
    p.add_argument("--patch", type=positive_int, default=None,
                   help="tile size of --view patch (default a quarter of the image)")


def _run_anagram(args: argparse.Namespace) -> int:
    from ..pipelines.joint import anagram_terms, check_pixel_model
    from ..pipelines.views import anagram_view

    out = check_image_out(args.out)
    model = load_run_model(args)
    _, h, w = check_pixel_model(model)
    count = len(args.prompt or args.label or [])
    if count < 2:
        raise UsageError("an anagram needs two or more --prompt (text runs) or --label (class runs)")
    names_of_views = args.view or ["flip"]
    if len(names_of_views) == 1:
        names_of_views = names_of_views * (count - 1)
    if len(names_of_views) != count - 1:
        raise UsageError(f"{len(names_of_views)} --view for {count} prompts: give one, or one per prompt after the "
                         f"first")
    conds, names = _conditions(args, model, count, "views")
    patch = args.patch or max(1, min(h, w) // 4)
    views = [anagram_view("identity", (h, w))] + [anagram_view(v, (h, w), patch=patch, seed=args.seed)
                                                    for v in names_of_views]
    x, seconds = _run(args, model, anagram_terms(views, conds))
    rows = [v.project(x) for v in views]
    labels = [f"{names[0]} (as is)"] + [f"{n} ({v})" for n, v in zip(names[1:], names_of_views)]
    _save(out, rows, labels, ["images"] + [f"{v}_{i + 1}" for i, v in enumerate(names_of_views)])
    print(f"{len(x)} anagrams {' / '.join(names)} ({', '.join(names_of_views)}, average {args.average}) in "
          f"{seconds:.1f} s; wrote {out}")
    return 0


COMMANDS = {
    "panorama": ("joint denoising of a wider or taller canvas (MultiDiffusion, SyncDiffusion), with region "
                 "prompts and loop closure", _add_panorama, _run_panorama),
    "anagram": ("visual anagrams: one image that reads as one prompt as is and another flipped, rotated, negated "
                "or with patches permuted", _add_anagram, _run_anagram),
}
