"""Inversion and prompt-to-prompt on shapes text-to-image: reconstruction PSNR, attribute flips, layout kept.

The model: ``configs/shapes-text.yaml`` (16x16 shapes, frozen MiniLM tokens into the U-Net's cross-attention)
with one shape per image and 1200 steps of batch 32 (:data:`OVERRIDES`; trained here when missing). All in
one run, on held-out renders (seed 123, the training holdout kept) and on prompts of one shape:

- **Inversion** (``pipelines/inversion.py``): DDIM inversion of renders with their captions and DDIM sampling
  back, 50 steps (Mokady et al. 2023 use 50): at guidance 1, reconstructed at a high guidance from the
  unguided inversion (the case null-text inversion is for), inverted and reconstructed at that guidance, and
  null-text inversion at it (10 Adam steps of lr 1e-2 per step, as the official code; with its early stop at
  1e-5 + 2e-5 i, the default, and without). PSNR to the render, seconds per image.
- **Prompt-to-prompt** (``pipelines/p2p.py``, Hertz et al. 2023): a source prompt and its edit with one word
  changed (colour, or kind), from the same seed, 50 DDIM steps at the run's guidance; cross-attention injected
  for 80% of the steps and self-attention for 40%. Methods: replace, refine and reweight (refine with the new
  word's attention x2), against the baseline of regenerating the edited prompt from the same seed. Scores:
  *flip* = the shapes attribute network reads the edited attribute as the edit prompt says; *kept* = it reads
  the other attribute (kind for a colour edit, colour for a kind edit) and the region as in the source;
  *IoU* = of the foreground masks (pixels brighter than the black background) of source and edit: layout
  preservation; *align* = the edit's full text alignment with its prompt. Real images: null-text inversion of
  renders, then the replace edit, with IoU against the renders' own masks (the dataset's ``masks``).

    python benchmarks/editing.py                 # rewrites its RESULTS.md section
    python benchmarks/editing.py --quick --no-write
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from _common import write_section  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Inversion and prompt-to-prompt"
RUN = ROOT / "runs" / "editing" / "shapes-text-1shape"
OVERRIDES = ["data.max_shapes=1", "train.steps=1200", "train.batch_size=32", "train.save_every=200",
             "optim.warmup_steps=100"]
HELD_OUT_SEED = 123
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink")  # one MiniLM token each (cyan is two)


def ensure_run(threads: int) -> dict[str, Any]:
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.train.trainer import train_from_config

    if latest_checkpoint(RUN / "checkpoints") is not None:
        return {"trained_s": None}
    print(f"training {RUN} ...", flush=True)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train_from_config(ROOT / "configs" / "shapes-text.yaml", RUN, overrides=OVERRIDES, progress=False)
    return {"trained_s": time.perf_counter() - t0}


def renders(n: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` held-out one-shape renders, their captions and foreground masks ``(n, H, W)``."""
    from denoisekit.data.shapes import DEFAULT_HOLDOUT, ShapesDataset

    ds = ShapesDataset(size=16, length=n, seed=HELD_OUT_SEED, max_shapes=1, holdout=DEFAULT_HOLDOUT)
    items = [ds[i] for i in range(n)]
    return (torch.stack([it["image"] for it in items]), [it["caption"] for it in items],
            torch.stack([it["masks"][0] for it in items]))


def foreground(x: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` bool: pixels above half the image's brightest (max over channels) on the black background;
    the renders' masks are the pixels more than half covered by a shape, so this is their rule for a flat shape."""
    v = (x.clamp(-1, 1).amax(1) + 1) / 2
    return v > 0.5 * v.flatten(1).amax(1)[:, None, None]


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter, union = (a & b).flatten(1).sum(1), (a | b).flatten(1).sum(1)
    return inter / union.clamp_min(1)


# --- inversion -------------------------------------------------------------------------------------------

def inversion_table(model: Any, n: int, steps: int, scales: tuple[float, ...]) -> list[dict[str, Any]]:
    from denoisekit.pipelines.inversion import (ddim_invert, inversion_grid, model_conditions, null_text_inversion,
                                                reconstruct)
    from denoisekit.train.autoencoder_eval import psnr

    x, captions, _ = renders(n)
    cond, null = model_conditions(model, captions, n=n)
    grid = inversion_grid(model, steps)
    rows = []

    def row(name: str, w: float, nfe: int, fn: Any) -> None:
        t0 = time.perf_counter()
        out = fn().clamp(-1, 1)
        seconds = (time.perf_counter() - t0) / n
        db = psnr(out, x)
        rows.append({"method": name, "w": w, "psnr": db.mean().item(), "std": db.std().item(), "nfe": nfe,
                     "s_per_image": seconds})
        print(rows[-1], flush=True)

    cfg_nfe = 2 * steps  # a guided step is one batched pass of 2 rows
    plain = ddim_invert(model.denoiser, x, grid, cond, null)
    row("DDIM inversion, reconstruction at w = 1", 1.0, 2 * steps,
        lambda: reconstruct(model.denoiser, ddim_invert(model.denoiser, x, grid, cond, null)))
    for w in scales:
        row("unguided inversion, guided reconstruction", w, steps + cfg_nfe,
            lambda w=w: reconstruct(model.denoiser, plain, scale=w))
        row("guided inversion and reconstruction", w, 2 * cfg_nfe,
            lambda w=w: reconstruct(model.denoiser, ddim_invert(model.denoiser, x, grid, cond, null, scale=w)))
        nt_nfe = steps + 2 * steps * (1 + 10) + cfg_nfe  # at most: the early stop may skip Adam steps
        row("null-text inversion, the official early stop 1e-5 + 2e-5 i (default)", w, nt_nfe,
            lambda w=w: reconstruct(model.denoiser, null_text_inversion(model.denoiser, x, grid, cond, null, scale=w)))
        row("null-text inversion, no early stop", w, nt_nfe,
            lambda w=w: reconstruct(model.denoiser, null_text_inversion(model.denoiser, x, grid, cond, null, scale=w,
                                                                        tol=0.0, tol_step=0.0)))
    return rows


# --- prompt-to-prompt ------------------------------------------------------------------------------------

def edit_prompts(n: int, attribute: str) -> tuple[list[str], list[str]]:
    """``n`` one-shape source prompts (seen pairs) and their edits with the colour or the kind changed to another
    seen one (deterministic)."""
    import numpy as np

    from denoisekit.data.shapes import DEFAULT_HOLDOUT, KINDS, held_out_pairs, parse_caption
    from denoisekit.eval.alignment import alignment_prompts

    held = set(held_out_pairs(DEFAULT_HOLDOUT))
    sources, edits = [], []
    pool = [p for p in alignment_prompts("seen", 8 * n, seed=5)[::2] if parse_caption(p).shapes[0].colour in COLOURS]
    rng = np.random.default_rng(7)
    for p in pool:
        s = parse_caption(p).shapes[0]
        if attribute == "colour":
            options = [c for c in COLOURS if c != s.colour and (c, s.kind) not in held]
            new = p.replace(f" {s.colour} ", f" {options[rng.integers(len(options))]} ")
        else:
            options = [k for k in KINDS if k != s.kind and (s.colour, k) not in held]
            new = p.replace(f" {s.kind} ", f" {options[rng.integers(len(options))]} ")
        sources.append(p)
        edits.append(new)
        if len(sources) == n:
            break
    return sources, edits


def edit_scores(src: torch.Tensor, edit: torch.Tensor, sources: list[str], edits: list[str], attribute: str,
                network: Any, masks: torch.Tensor | None = None) -> dict[str, float]:
    from denoisekit.eval.alignment import HEAD_NAMES, predict_attributes, text_alignment

    h = {name: i for i, name in enumerate(HEAD_NAMES)}
    other = "kind" if attribute == "colour" else "colour"
    p_src, p_edit = predict_attributes(network, src.clamp(-1, 1)), predict_attributes(network, edit.clamp(-1, 1))
    from denoisekit.eval.alignment import caption_labels

    target = torch.tensor([caption_labels(e) for e in edits])
    flip = (p_edit[:, h[f"first_{attribute}"]] == target[:, h[f"first_{attribute}"]]).double()
    kept = ((p_edit[:, h[f"first_{other}"]] == p_src[:, h[f"first_{other}"]])
            & (p_edit[:, h["region"]] == p_src[:, h["region"]])).double()
    reference = masks if masks is not None else foreground(src)
    return {"flip": flip.mean().item(), "kept": kept.mean().item(),
            "iou": iou(reference, foreground(edit)).mean().item(),
            "align": text_alignment(edit.clamp(-1, 1), edits, network)["alignment"]}


def p2p_table(model: Any, n: int, steps: int, network: Any) -> list[dict[str, Any]]:
    from denoisekit.generation import Guidance, generate
    from denoisekit.pipelines.p2p import prompt_to_prompt

    w = model.defaults.cfg_scale
    rows = []
    for attribute in ("colour", "kind"):
        sources, edits = edit_prompts(n, attribute)
        src = generate(model, n, {"text": sources}, sampler="ddim", nfe=steps, guidance=Guidance(cfg_scale=w), seed=0)
        t0 = time.perf_counter()
        regen = generate(model, n, {"text": edits}, sampler="ddim", nfe=steps, guidance=Guidance(cfg_scale=w), seed=0)
        rows.append({"task": attribute, "method": "regenerate the edit (same seed)",
                     **edit_scores(src, regen, sources, edits, attribute, network),
                     "s_per_image": (time.perf_counter() - t0) / n})
        print(rows[-1], flush=True)
        for mode in ("replace", "refine", "reweight"):
            srcs, eds, parts = [], [], []
            t0 = time.perf_counter()
            for i, (s, e) in enumerate(zip(sources, edits)):  # one pair per call: each has its own token plan
                new = e.split()[2] if attribute == "colour" else e.split()[3]
                res = prompt_to_prompt(model, s, e, mode=mode, steps=steps, scale=w, seed=i,
                                       weights={new: 2.0} if mode == "reweight" else None)
                srcs.append(res.source)
                eds.append(res.edit)
            seconds = (time.perf_counter() - t0) / n
            parts = edit_scores(torch.cat(srcs), torch.cat(eds), sources, edits, attribute, network)
            label = {"replace": "replace", "refine": "refine", "reweight": "reweight (refine, new word x2)"}[mode]
            rows.append({"task": attribute, "method": label, **parts, "s_per_image": seconds})
            print(rows[-1], flush=True)
    return rows


def real_table(model: Any, n: int, steps: int, network: Any) -> list[dict[str, Any]]:
    """Colour edits of renders through null-text inversion: replace against the edited prompt from the same
    inverted latent without attention control."""
    import numpy as np

    from denoisekit.data.shapes import DEFAULT_HOLDOUT, held_out_pairs, parse_caption
    from denoisekit.pipelines.inversion import inversion_grid, model_conditions, null_text_inversion, reconstruct
    from denoisekit.pipelines.p2p import prompt_to_prompt

    x, captions, masks = renders(4 * n)
    keep = [i for i, c in enumerate(captions) if parse_caption(c).shapes[0].colour in COLOURS][:n]
    x, captions, masks = x[keep], [captions[i] for i in keep], masks[keep]
    held, rng = set(held_out_pairs(DEFAULT_HOLDOUT)), np.random.default_rng(11)
    edits = []
    for c in captions:
        s = parse_caption(c).shapes[0]
        options = [k for k in COLOURS if k != s.colour and (k, s.kind) not in held]
        edits.append(c.replace(f" {s.colour} ", f" {options[rng.integers(len(options))]} "))
    w, grid = model.defaults.cfg_scale, inversion_grid(model, steps)
    rows = []
    srcs, eds, regs = [], [], []
    t0 = time.perf_counter()
    for i in range(len(x)):
        cond, null = model_conditions(model, [captions[i]])
        inv = null_text_inversion(model.denoiser, x[i:i + 1], grid, cond, null, scale=w)
        res = prompt_to_prompt(model, captions[i], edits[i], mode="replace", scale=w, inversion=inv)
        srcs.append(res.source)
        eds.append(res.edit)
        edit_cond, _ = model_conditions(model, [edits[i]])
        regs.append(reconstruct(model.denoiser, dataclasses.replace(inv, cond=edit_cond)))
    seconds = (time.perf_counter() - t0) / len(x)
    for name, out in (("edited prompt from the inverted latent, no control", torch.cat(regs)),
                      ("null-text inversion + replace", torch.cat(eds))):
        rows.append({"task": "colour (real renders)", "method": name,
                     **edit_scores(x, out, captions, edits, "colour", network, masks=masks), "s_per_image": seconds})
        print(rows[-1], flush=True)
    rows.append({"task": "colour (real renders)", "method": "(the renders' own foreground vs their masks)",
                 "flip": float("nan"), "kept": float("nan"), "iou": iou(masks, foreground(x)).mean().item(),
                 "align": float("nan"), "s_per_image": float("nan")})
    return rows


def fmt(v: float, spec: str = ".3f") -> str:
    return "—" if math.isnan(v) else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few images and steps (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from denoisekit.eval.alignment import shapes_attribute_network
    from denoisekit.train.run import load_model

    info = ensure_run(args.threads)
    model = load_model(RUN)
    network = shapes_attribute_network(16)
    n_inv, n_p2p, n_real, steps = (4, 4, 2, 10) if args.quick else (6, 16, 4, 50)
    t0 = time.perf_counter()
    with torch.no_grad():
        inv = inversion_table(model, n_inv, steps, (model.defaults.cfg_scale, 7.5))
        p2p = p2p_table(model, n_p2p, steps, network)
        real = real_table(model, n_real, steps, network)
    total = time.perf_counter() - t0

    lines = [SECTION, "",
             f"`python benchmarks/editing.py` ({platform.machine()}, {args.threads} thread(s), {total / 60:.0f} min). The "
             f"model: `configs/shapes-text.yaml` with `{' '.join('--set ' + o for o in OVERRIDES)}` (one shape per "
             "image, 16x16, MiniLM cross-attention); "
             + (f"trained here in {info['trained_s']:.0f} s." if info["trained_s"] else
                "trained in 922 s wall (15 min) on one thread of the shared 2-core machine (load 5-7 from other "
                "jobs; about 7 min on an idle core at the 2.7 steps/s measured before the load rose)."),
             "",
             f"### DDIM and null-text inversion ({n_inv} held-out renders with their captions, {steps} DDIM steps)", "",
             "| method | guidance w | PSNR (dB) | std | NFE / image | s / image |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['w']:g} | {r['psnr']:.2f} | {r['std']:.2f} | {r['nfe']} | {r['s_per_image']:.2f} |"
              for r in inv]
    lines += ["", f"### Prompt-to-prompt ({n_p2p} pairs per task, {steps} DDIM steps, w = {model.defaults.cfg_scale:g})",
              "", ("flip: the attribute network reads the edited attribute as prompted; kept: it reads the other "
                   "attribute and the region as in the source; IoU: foreground masks of source and edit; align: the "
                   "edit's full text alignment with the edit prompt."), "",
              "| task | method | flip | kept | IoU | align | s / pair |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['method']} | {fmt(r['flip'])} | {fmt(r['kept'])} | {fmt(r['iou'])} | "
              f"{fmt(r['align'])} | {fmt(r['s_per_image'], '.2f')} |" for r in p2p + real]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
