"""Score distillation measured on a colour-conditioned shapes run (configs/shapes16-colour.yaml).

    python benchmarks/score_distillation.py runs/shapes16 [--steps 300] [--write]

1. SDS on the shapes renderer (one soft circle of random colour, size and position per particle) toward each of
   the 8 colour classes: the fraction of particles whose rendered shape reads as the prompt's colour, against
   steps (chance 1/8 at step 0).
2. PDS against SDS when editing dataset images (one shape) from their colour to another: along each method's
   trajectory, the target alignment (the fraction read as the target colour, and the progress of the shape's
   mean colour from the source's to the target's) and the distance to the source (RMSE over all pixels and
   over the background). At equal alignment PDS should stay closer (Koo et al. 2024).
3. text-to-3D on the voxel scene: the fraction of 8 turntable views whose colour reads as the prompt
   (multi-view agreement) and the silhouette IoU of opposite views (mirrored).

The colour reading is closed-form: the mean colour of the shape's pixels (pixels away from the black
background; for the edits, the source's shape pixels) and its nearest colour of the dataset's palette.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch


from denoisekit.data.shapes import COLOURS, ShapesDataset
from denoisekit.models.render3d import VoxelScene
from denoisekit.pipelines.score_distill import distill_image, text_to_3d
from denoisekit.train.run import load_model

PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1  # (8, 3) in [-1, 1]
NAMES = list(COLOURS)


def shape_colour(images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 3)`` mean colour of the shape pixels: ``mask`` (B, H, W), else pixels away from black."""
    if mask is None:
        mask = (images + 1).norm(dim=1) > 0.6
    m = mask[:, None].float()
    return (images * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)


def read_colour(images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` palette index nearest to the shape's mean colour (-1 where no pixel is a shape pixel)."""
    if mask is None:
        mask = (images + 1).norm(dim=1) > 0.6
    idx = torch.cdist(shape_colour(images, mask), PALETTE).argmin(1)
    return torch.where(mask.flatten(1).any(1), idx, torch.full_like(idx, -1))


def sds_shapes(model, steps: int, n: int, checkpoints: list[int], cfg: float) -> dict[int, float]:
    hits = {c: 0 for c in [0, *checkpoints]}
    for k, name in enumerate(NAMES):
        def record(i, images, k=k):
            if i + 1 in hits:
                hits[i + 1] += int((read_colour(images.cpu()) == k).sum())
        distill_image(model, name, param="shapes", n=n, steps=steps, cfg_scale=cfg, seed=k, callback=record)
    return {c: v / (n * len(NAMES)) for c, v in sorted(hits.items())}


def edit_curves(model, method: str, source, mask, src_idx, tgt_idx, steps: int, cfg: float, lr: float):
    """``(steps + 1, 5)``: accuracy (read as the target colour), progress of the shape's mean colour from the
    source's palette colour to the target's, RMSE to the source over all pixels and over the background, and
    the IoU of the edit's shape pixels with the source's shape mask; averaged over the edits. One run per target colour (``distill_image`` takes one prompt)."""
    curves = []
    for t in sorted({int(v) for v in tgt_idx}):
        sel = (tgt_idx == t).nonzero().flatten()
        assert len({int(src_idx[j]) for j in sel}) == 1, "one source colour per target"
        m, src = mask[sel], source[sel]
        sc, tc = PALETTE[src_idx[sel]], PALETTE[tgt_idx[sel]]
        bg = (~m)[:, None].float().expand_as(src)
        rows = []

        def record(i, images):
            x = images.cpu()
            progress = ((shape_colour(x, m) - sc) * (tc - sc)).sum(1) / (tc - sc).norm(dim=1) ** 2
            acc = (read_colour(x, m) == t).float()
            rmse = ((x - src) ** 2).mean((1, 2, 3)).sqrt()
            rmse_bg = (((x - src) ** 2 * bg).sum((1, 2, 3)) / bg.sum((1, 2, 3))).sqrt()
            fg = (x + 1).norm(dim=1) > 0.6                                         # the edit's shape pixels
            iou = (fg & m).sum((1, 2)) / (fg | m).sum((1, 2)).clamp_min(1)
            rows.append(torch.stack([acc, progress, rmse, rmse_bg, iou], 1))

        distill_image(model, NAMES[t], method=method, source=src, source_prompt=NAMES[int(src_idx[sel[0]])],
                      n=len(sel), steps=steps, lr=lr, cfg_scale=cfg, seed=t, callback=record)
        curves.append(torch.stack(rows))                                           # (steps, n_t, 4)
    return torch.cat(curves, 1).mean(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=8, help="particles per colour prompt")
    ap.add_argument("--edits", type=int, default=16)
    ap.add_argument("--edit-steps", type=int, default=200)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--lr", type=float, default=0.02, help="Adam lr of the edited pixels")
    ap.add_argument("--scenes", default="red,blue", help="colour prompts of the 3-D scenes")
    ap.add_argument("--scene-steps", type=int, default=150)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(args.run)
    if args.steps > 0:  # --steps 0: skip part 1
        t0 = time.perf_counter()
        checkpoints = [c for c in (10, 25, 50, 100, 200, 300, 500) if c <= args.steps]
        acc = sds_shapes(model, args.steps, args.n, checkpoints, args.cfg)
        print(f"SDS on the shapes renderer ({args.n} particles x 8 colours, cfg {args.cfg:g}, "
              f"{time.perf_counter() - t0:.0f} s): colour accuracy by step")
        print("| step | " + " | ".join(str(c) for c in acc) + " |")
        print("| accuracy | " + " | ".join(f"{v:.2f}" for v in acc.values()) + " |")

    ds = ShapesDataset(size=model.image_shape[-1], length=4000, max_shapes=1, label_from="colour",
                       return_masks=True, seed=7)
    # sources: the first images of colour k (k = 0..7, cycling), each edited to colour (k + 3) % 8
    picked, k, i = [], 0, 0
    while len(picked) < args.edits and i < len(ds):
        item = ds[i]
        if int(item["label"]) == k % 8:
            picked.append(item)
            k += 1
        i += 1
    source = torch.stack([p["image"] for p in picked])
    mask = torch.stack([p["masks"][0] for p in picked])
    src_idx = torch.tensor([int(p["label"]) for p in picked])
    tgt_idx = (src_idx + 3) % 8
    for method in ("sds", "pds"):
        t0 = time.perf_counter()
        c = edit_curves(model, method, source, mask, src_idx, tgt_idx, args.edit_steps, args.cfg, args.lr)
        print(f"\n{method.upper()} edits ({len(picked)} images, {args.edit_steps} steps, lr {args.lr:g}, "
              f"{time.perf_counter() - t0:.0f} s)")
        print("| step | accuracy | progress | RMSE | RMSE background | shape IoU |")
        for s in sorted({0, 5, 10, 20, 50, 100, 150, args.edit_steps}):  # row s: after step s (0: the source)
            if s < len(c):
                a, p, r, rb, iou = c[s].tolist()
                print(f"| {s} | {a:.2f} | {p:.2f} | {r:.3f} | {rb:.3f} | {iou:.2f} |")
        for level in (0.5, 0.8):
            reach = (c[:, 1] >= level).nonzero()
            if len(reach):
                s = int(reach[0])
                print(f"progress >= {level}: step {s}, accuracy {c[s, 0]:.2f}, RMSE {c[s, 2]:.3f}, "
                      f"background RMSE {c[s, 3]:.3f}, shape IoU {c[s, 4]:.2f}")
            else:
                print(f"progress >= {level}: not reached (max {float(c[:, 1].max()):.2f})")


    print(f"\n3-D scenes ({args.scene_steps} steps x 4 views), 8 turntable views each")
    print("| prompt | views read as the prompt (start -> end) | opposite-view silhouette IoU | seconds |")
    for name in args.scenes.split(","):
        t0 = time.perf_counter()
        scene = text_to_3d(model, name, steps=args.scene_steps, cfg_scale=args.cfg, seed=1)
        az = torch.arange(8, dtype=torch.float64) / 8 * 2 * math.pi
        start = VoxelScene(16, model.image_shape[-1], generator=torch.Generator().manual_seed(1))  # text_to_3d's start
        with torch.no_grad():
            images, sil = scene.render(az, torch.zeros_like(az))
            before = float((read_colour(start(az).clamp(-1, 1)) == NAMES.index(name)).float().mean())
        agree = float((read_colour(images.clamp(-1, 1)) == NAMES.index(name)).float().mean())
        a, b = sil[:4, 0] > 0.5, sil[4:, 0].flip(-1) > 0.5                             # views i and i + 180 deg
        iou = float(((a & b).sum((1, 2)) / (a | b).sum((1, 2)).clamp_min(1)).mean())
        print(f"| {name} | {before:.2f} -> {agree:.2f} | {iou:.3f} | {time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
