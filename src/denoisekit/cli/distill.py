"""``denoisekit distill-image`` and ``text-to-3d``: score distillation (SDS, PDS, VSD) with a trained run.

    denoisekit distill-image RUN --prompt red --method sds --param shapes --kinds circle --steps 300 --out sds.png
    denoisekit distill-image RUN --prompt blue --method pds --source red.png --source-prompt red --out pds.png
    denoisekit text-to-3d RUN --prompt red --steps 300 --out scene.gif [--volume scene.safetensors]

``--prompt`` is a caption for a text run and a class name (or index) for a class run. ``distill-image`` writes a
PNG grid (the start, or the source, above the results) or an .npz; ``text-to-3d`` writes a turntable GIF of the
voxel scene and its density and colour volume as safetensors (default: the GIF's path with ``.safetensors``).
Each command is one ``_add_X`` / ``_run_X`` pair in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .common import THREADS_HELP, UsageError, add_device, positive_int, resolve_device, threads
from .edit import WEIGHTS_HELP, read_images


def _add_shared(p: argparse.ArgumentParser, *, steps: int) -> None:
    p.add_argument("run", help="a class or text run directory written by 'denoisekit train'")
    p.add_argument("--prompt", required=True, help="a caption (text runs) or a class name or index (class runs)")
    p.add_argument("--steps", type=positive_int, default=steps, help=f"optimisation steps (default {steps})")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the parameters (default 0.05)")
    p.add_argument("--cfg", type=float, default=7.5,
                   help="classifier-free guidance scale (default 7.5: SDS wants strong guidance, DreamFusion 100)")
    p.add_argument("--sigma-min", type=float, default=0.05, help="smallest VE noise level drawn (default 0.05)")
    p.add_argument("--sigma-max", type=float, default=2.0, help="largest VE noise level drawn (default 2)")
    p.add_argument("--weighting", default="snr", choices=("uniform", "sigma", "snr"),
                   help="w(sigma) of the update: snr = sigma^2 / (1 + sigma^2), DreamFusion's (default)")
    p.add_argument("--lora-rank", type=positive_int, default=4, help="VSD: rank of the particle denoiser's LoRA")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial parameters and the noise draws")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help=WEIGHTS_HELP)
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    add_device(p)


def _load(args: argparse.Namespace) -> Any:
    from ..train.run import load_model

    if not args.sigma_min > 0 or args.sigma_max < args.sigma_min:
        raise UsageError(f"need 0 < --sigma-min <= --sigma-max, got {args.sigma_min:g}, {args.sigma_max:g}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr:g}")
    from ..pipelines.score_distill import prompt_condition

    model = load_model(args.run, weights=args.weights, device=resolve_device(args.device))
    if model.kind not in ("class", "text"):
        raise UsageError(f"score distillation needs a class or text run (a prompt); {args.run} is "
                         f"conditioned on {model.kind!r}")
    prompt_condition(model, args.prompt, 1)  # an unknown class is one line before any work
    return model


# ------------------------------------------------------------------------------------------ distill-image

def _add_distill_image(p: argparse.ArgumentParser) -> None:
    _add_shared(p, steps=300)
    p.add_argument("--method", default="sds", choices=("sds", "pds", "vsd"),
                   help="sds: Poole et al. 2023; pds: Koo et al. 2024 (an edit of --source); vsd: Wang et al. 2023")
    p.add_argument("--param", default="image", choices=("image", "shapes"),
                   help="image: free pixels (latents of a latent run); shapes: the soft-edged shapes renderer")
    p.add_argument("--kinds", default="circle",
                   help="--param shapes: comma-separated shapes drawn (circle, square, star; default circle)")
    p.add_argument("--source", default=None, help="an image (file or .npz) to start from; PDS's source (required)")
    p.add_argument("--source-prompt", default=None, help="PDS: the source's prompt (default --prompt)")
    p.add_argument("--n", type=positive_int, default=4, help="images (particles) optimised together (default 4)")
    p.add_argument("--out", required=True, help="a .png grid or an .npz")


def _run_distill_image(args: argparse.Namespace) -> int:
    from ..eval.plotting import save_grid
    from ..pipelines.output import save_npz
    from ..pipelines.score_distill import distill_image, pixel_shape

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise UsageError(f"--out must end in .png or .npz, got {out.name!r}")
    if args.method == "pds" and args.source is None:
        raise UsageError("--method pds edits a source image: give --source (and optionally --source-prompt)")
    if args.param == "shapes" and args.source is not None and args.method != "pds":
        raise UsageError("--source starts a free image (--param image); the shapes renderer starts at random")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    model = _load(args)
    shape = pixel_shape(model)
    source = None
    if args.source is not None:
        source = read_images(args.source, shape[0], "--source")
        if tuple(source.shape[1:]) != shape:
            raise UsageError(f"--source is {source.shape[3]}x{source.shape[2]}; this run makes {shape[2]}x{shape[1]}")
        if len(source) not in (1, args.n):
            raise UsageError(f"--source has {len(source)} images; give 1 or --n {args.n}")
    first: list[torch.Tensor] = []

    def keep_start(i: int, images: torch.Tensor) -> None:
        if i < 0:
            first.append(images.cpu())

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        x = distill_image(model, args.prompt, method=args.method, param=args.param, source=source,
                          source_prompt=args.source_prompt, n=args.n, steps=args.steps, lr=args.lr,
                          cfg_scale=args.cfg, sigma_range=(args.sigma_min, args.sigma_max), weighting=args.weighting,
                          kinds=kinds, lora_rank=args.lora_rank, seed=args.seed, callback=keep_start).cpu()
    seconds = time.perf_counter() - start
    rows, labels = [first[0], x], ["start (random)", f"{args.method} ({args.param}): {args.prompt}"]
    if source is not None:
        labels[0] = f"source ({args.source_prompt or args.prompt})" if args.method == "pds" else "source"
        if args.param == "shapes":  # PDS of a render toward a prompt, measured against the source image
            rows, labels = [source.expand_as(x).cpu(), *rows], [labels[0], "start (random)", labels[1]]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        save_grid(rows, out, labels=labels, aligned=True)
    else:
        save_npz(out, **{label.split(" ")[0]: r for label, r in zip(labels, rows)})
    print(f"{args.method.upper()} on {args.param} toward {args.prompt!r}: {len(x)} image(s), {args.steps} steps in "
          f"{seconds:.1f} s; wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------ text-to-3d

def _add_text_to_3d(p: argparse.ArgumentParser) -> None:
    _add_shared(p, steps=300)
    p.add_argument("--method", default="sds", choices=("sds", "vsd"), help="sds (DreamFusion) or vsd (ProlificDreamer)")
    p.add_argument("--grid", type=positive_int, default=16, help="voxels per side of the scene (default 16)")
    p.add_argument("--views", type=positive_int, default=4, help="azimuths rendered per step (default 4)")
    p.add_argument("--elevation", type=float, default=0.0, help="camera elevation in degrees (default 0)")
    p.add_argument("--frames", type=positive_int, default=16, help="turntable frames of the GIF (default 16)")
    p.add_argument("--no-view-prompts", action="store_true",
                   help="text runs: no ', front view' / ', side view' / ', back view' suffixes")
    p.add_argument("--out", required=True, help="the turntable .gif")
    p.add_argument("--volume", default=None, help="the density and colour .safetensors (default: --out's stem)")


def save_gif(frames: torch.Tensor, path: Path, *, cell: int = 96, duration_ms: int = 120) -> None:
    """``(T, C, H, W)`` frames in ``[-1, 1]`` as a looping GIF, each up-scaled (nearest) to ``cell`` pixels."""
    from PIL import Image

    from ..data.transforms import tensor_to_uint8
    from ..io import write_atomic

    arr = tensor_to_uint8(frames)
    images = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).resize((cell, cell), Image.NEAREST)
              for a in arr]
    write_atomic(path, lambda p: images[0].save(p, format="GIF", save_all=True, append_images=images[1:],
                                                duration=duration_ms, loop=0))


def _run_text_to_3d(args: argparse.Namespace) -> int:
    from ..io import save_tensors_atomic
    from ..pipelines.score_distill import text_to_3d, turntable

    out = Path(args.out)
    if out.suffix.lower() != ".gif":
        raise UsageError(f"--out must end in .gif, got {out.name!r}")
    volume = Path(args.volume) if args.volume else out.with_suffix(".safetensors")
    if volume.suffix.lower() != ".safetensors":
        raise UsageError(f"--volume must end in .safetensors, got {volume.name!r}")
    if args.grid < 2:
        raise UsageError(f"--grid must be >= 2, got {args.grid}")
    model = _load(args)
    elevation = math.radians(args.elevation)
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        scene = text_to_3d(model, args.prompt, method=args.method, grid=args.grid, views=args.views, steps=args.steps,
                           lr=args.lr, cfg_scale=args.cfg, sigma_range=(args.sigma_min, args.sigma_max),
                           weighting=args.weighting, elevation=elevation,
                           view_prompts=False if args.no_view_prompts else None, lora_rank=args.lora_rank,
                           seed=args.seed)
        frames = turntable(scene.cpu(), args.frames, elevation)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    volume.parent.mkdir(parents=True, exist_ok=True)
    save_gif(frames, out)
    density, colour = scene.fields()
    meta = {"format": "denoisekit.voxel_scene", "grid": str(scene.grid), "size": str(scene.size),
            "samples": str(scene.samples), "prompt": args.prompt, "method": args.method,
            "axes": json.dumps(["z", "y", "x"])}
    save_tensors_atomic(volume, {"density": density.detach(), "colour": colour.detach()}, meta)
    print(f"text-to-3D ({args.method.upper()}) toward {args.prompt!r}: {args.grid}^3 voxels, {args.steps} steps "
          f"x {args.views} views in {seconds:.1f} s; wrote {out} ({args.frames} frames) and {volume}")
    return 0


COMMANDS = {
    "distill-image": ("score distillation (SDS, PDS, VSD) of a prompt into an image or the shapes renderer",
                      _add_distill_image, _run_distill_image),
    "text-to-3d": ("DreamFusion at toy scale: distil a prompt into a voxel scene seen from azimuths (GIF, volume)",
                   _add_text_to_3d, _run_text_to_3d),
}
