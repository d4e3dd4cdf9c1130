"""``denoisekit clip``: train the project's CLIP (into the cache, or a directory) and show what it retrieves."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .common import THREADS_HELP, UsageError, key_values, positive_int, threads

#: Prompts of the retrieval figure (each row: the held-out renders nearest to it).
FIGURE_PROMPTS = ("a large red circle in the centre", "a small blue square in the top left",
                  "a large green star left of a small yellow cross",
                  "a large purple triangle above a small orange diamond",
                  "a small cyan cross on the right", "a large pink diamond below a large blue circle")


def _add_clip(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None,
                   help="train into this directory (default: the cache entry the metrics load; what 'make clip' fills)")
    p.add_argument("--noisy", action="store_true",
                   help="the noise-aware CLIP of CLIP guidance (GLIDE), trained on noisy images")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model.KEY (denoisekit.models.clip.CLIPConfig), training.KEY (eval.clip_recipe.CLIPTraining) "
                        "or train.steps=N; a directory run only")
    p.add_argument("--figure", default=None, metavar="PNG", help="also draw the renders nearest to a few prompts")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)


def _configs(items: list[str], noisy: bool) -> tuple[Any, Any, int | None]:
    from ..eval.clip import METRIC_CONFIG, NOISY_CONFIG
    from ..eval.clip_recipe import CLIPTraining

    model, training, steps = NOISY_CONFIG if noisy else METRIC_CONFIG, CLIPTraining(), None
    for key, value in key_values(items, "--set").items():
        section, _, name = key.partition(".")
        target = {"model": model, "training": training}.get(section)
        if section == "train" and name == "steps":
            steps = int(value)
        elif target is None or name not in {f.name for f in dataclasses.fields(target)}:
            names = [f"model.{f.name}" for f in dataclasses.fields(model)] + \
                [f"training.{f.name}" for f in dataclasses.fields(training)] + ["train.steps"]
            raise UsageError(f"--set: unknown key {key!r}; allowed: {', '.join(names)}")
        elif section == "model":
            model = dataclasses.replace(model, **{name: value})
        else:
            training = dataclasses.replace(training, **{name: value})
    return model, training, steps


def retrieval_figure(model: Any, path: str | Path, n: int = 400, per_row: int = 6) -> None:
    """Rows of :data:`FIGURE_PROMPTS`, each with its ``per_row`` nearest of ``n`` held-out renders."""
    from ..data.transforms import uint8_to_tensor
    from ..eval.clip import embed_images, embed_texts
    from ..eval.clip_data import heldout_shapes
    from ..eval.plotting import save_grid

    images, _ = heldout_shapes(n, model.config.image_size, max_shapes=2)
    sims = embed_texts(model, list(FIGURE_PROMPTS)) @ embed_images(model, images).T
    x = torch.stack([uint8_to_tensor(im) for im in images])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_grid([x[row.topk(per_row).indices] for row in sims], path, labels=list(FIGURE_PROMPTS), min_cell=48)


def _run_clip(args: argparse.Namespace) -> int:
    from ..eval.clip import clip_folder, clip_model, load_clip
    from ..eval.clip_recipe import train_clip

    model_cfg, training, steps = _configs(args.set, args.noisy)
    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        if args.out is None:
            if args.set:
                raise UsageError("--set changes the model: give --out DIR (the cache holds the default CLIPs)")
            folder = clip_folder(model_cfg, training)
            cached = (folder / "meta.json").is_file()
            model = clip_model(model_cfg, training)
            where = f"{folder} ({'already cached' if cached else 'trained'})"
        else:
            out = Path(args.out)
            if (out / "meta.json").exists():
                raise UsageError(f"--out {out} already holds a CLIP; choose a new directory")
            train_clip(out, model_cfg, training, steps=steps)
            model, where = load_clip(out), str(out)
        if args.figure:
            retrieval_figure(model, args.figure)
    r = model.info.get("heldout_recall", {})
    print(f"CLIP {where} in {time.perf_counter() - start:.0f} s: held-out shapes recall@1 image->text "
          f"{r.get('i2t@1', float('nan')):.3f}, text->image {r.get('t2i@1', float('nan')):.3f}"
          + (f"; wrote {args.figure}" if args.figure else ""), file=sys.stdout)
    return 0


def eval_clip(samples: str, where: str) -> dict[str, Any]:
    """``denoisekit eval SAMPLES --clip [DIR]``: the CLIP metrics of an .npz with ``images`` and ``prompts``,
    printed and returned (the cached CLIP for ``where == "cache"``, else the one in the directory)."""
    import numpy as np

    from ..eval.clip import clip_metrics, clip_model, format_clip_metrics, load_clip

    with np.load(samples, allow_pickle=False) as data:
        if "images" not in data or "prompts" not in data:
            raise UsageError(f"{samples}: --clip needs 'images' and 'prompts' (what 'denoisekit sample RUN --prompt "
                             f"... --out x.npz' writes for a text model); it has {', '.join(data.files) or 'nothing'}")
        images, prompts = data["images"], [str(p) for p in data["prompts"]]
    if where != "cache" and not Path(where).is_dir():
        raise UsageError(f"--clip {where!r} is not a directory (give a 'denoisekit clip --out' directory, or no value "
                         "for the cached CLIP)")
    model = clip_model() if where == "cache" else load_clip(where)
    metrics = clip_metrics(images, prompts, model)
    print(format_clip_metrics(metrics))
    return metrics


def clip_energy(scale: float, model: Any) -> Any:
    """``sample --clip-guidance S``: the noise-aware CLIP's energy for a text model in pixel space (None for 0)."""
    import math

    from ..conditioning import condition_keys
    from ..eval.clip import NOISY_CONFIG, CLIPEnergy, clip_model

    if scale == 0:
        return None
    if not math.isfinite(scale):
        raise UsageError(f"--clip-guidance must be finite, got {scale}")
    if "text" not in condition_keys(model.condition):
        raise UsageError(f"--clip-guidance steers toward prompts: it needs a text-conditional model (condition.kind: "
                         f"{model.kind})")
    if model.decoder is not None:
        raise UsageError("--clip-guidance guides in pixel space; this run samples latents")
    channels = model.image_shape[0]
    if channels != 3:
        raise UsageError(f"--clip-guidance needs RGB images; this model makes {channels} channel(s)")
    return CLIPEnergy(clip_model(NOISY_CONFIG))


COMMANDS = {
    "clip": ("train the project's CLIP (cached for the metrics, or into --out) for CLIP score and guidance",
             _add_clip, _run_clip),
}
