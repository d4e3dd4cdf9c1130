"""Guidance: control against fidelity as the guidance scale grows, on digits and on shapes text-to-image.

For each guidance method and scale, samples are drawn with the same seeds, sampler and NFE and scored:

- digits (class-conditional, ``configs/digits-demo.yaml``): classifier accuracy of the samples (does a
  "3" look like a 3, by the digits feature network) and FID against the digits, in that network's
  feature space. Methods: classifier-free guidance (Ho & Salimans 2022), CFG with guidance rescale
  phi 0.7 (Lin et al. 2023, std taken of v), CFG limited to the sigma interval (0.28, 2.9] of
  Kynkaanniemi et al. 2024, and classifier guidance (Dhariwal & Nichol 2021) of the model's
  unconditional mode with a noise-conditional classifier (``configs/classifier/digits.yaml``).
- shapes text-to-image (``configs/shapes-text.yaml``, 16x16, six (colour, kind) pairs held out of
  training): text alignment (the fraction of images whose count, layout and every shape's kind,
  colour and size match the prompt, judged by denoisekit's shapes attribute network) on captions of
  fresh renders ("seen") and on prompts naming a held-out pair ("unseen"), and FID against those
  renders in the attribute network's feature space.

Missing runs are trained first with their configs (the digits model ~4 min, the classifier ~2 min,
the text model ~20-30 min on 2 idle cores). Guidance should raise accuracy/alignment while FID has
an interior minimum; the table marks the best FID of each method.

    python benchmarks/guidance.py                         # rewrites its RESULTS.md section and guidance.png
    python benchmarks/guidance.py --quick --no-write      # smoke test: few samples and scales
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from _common import write_section  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
FIGURE = Path(__file__).with_name("guidance.png")
SECTION = "## Guidance"
INTERVAL = (0.28, 2.9)  # Kynkaanniemi et al. 2024's interval for EDM2 (sigma_data 0.5), in VE sigma


def ensure_run(config: str, out: Path, threads: int) -> Path:
    from denoisekit.train.trainer import train_from_config
    from denoisekit.engine.checkpoint import latest_checkpoint

    if latest_checkpoint(out / "checkpoints") is None:
        print(f"training {config} into {out} ...", flush=True)
        torch.set_num_threads(threads)
        train_from_config(ROOT / config, out, progress=False)
    return out


def ensure_classifier(out: Path, threads: int) -> Path:
    from denoisekit.train.classifier import run_train_classifier

    if not (out / "model.safetensors").is_file():
        torch.set_num_threads(threads)
        run_train_classifier(ROOT / "configs" / "classifier" / "digits.yaml", out)
    return out


def draw(model: Any, guidance: Any, cond: Any, n: int, args: argparse.Namespace) -> torch.Tensor:
    """``n`` images of a loaded run with ``guidance`` for ``cond`` (labels or prompts); image i uses seed + i."""
    from denoisekit.generation import generate

    cond = {"text": list(cond)} if isinstance(cond, (list, tuple)) else cond
    with torch.no_grad():
        return generate(model, n, cond, sampler=args.sampler, nfe=args.nfe, guidance=guidance, seed=args.seed,
                        batch_size=args.batch).clamp(-1, 1)  # on the run's grid (sample.schedule)


def methods(scales: list[float], cg_scales: list[float], classifier: Any = None) -> list[tuple[str, float, Any]]:
    """``(method, scale, Guidance)`` rows: CFG plain, rescaled and on an interval; classifier guidance of the
    model's unconditional mode (its labels go to the classifier only)."""
    from denoisekit.generation import Guidance

    rows = [("CFG", s, Guidance(cfg_scale=s)) for s in scales]
    rows += [("CFG + rescale 0.7", s, Guidance(cfg_scale=s, rescale=0.7)) for s in scales if s != 1]
    rows += [(f"CFG in ({INTERVAL[0]:g}, {INTERVAL[1]:g}]", s, Guidance(cfg_scale=s, interval=INTERVAL))
             for s in scales if s != 1]
    rows += [("classifier guidance", s, Guidance(classifier=classifier, classifier_scale=s,
                                                 classifier_conditional=False)) for s in cg_scales]
    return rows


def digits_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from denoisekit.eval.report import evaluate
    from denoisekit.train.classifier import load_classifier
    from denoisekit.train.run import load_model

    model = load_model(ensure_run("configs/digits-demo.yaml", Path(args.digits_run), args.threads))
    clf = load_classifier(ensure_classifier(Path(args.classifier), args.threads))
    n = args.n_digits
    labels = torch.arange(10).repeat_interleave(math.ceil(n / 10))[:n]
    rows = []
    for name, scale, guidance in methods(args.scales, args.cg_scales, clf):
        t0 = time.perf_counter()
        x = draw(model, guidance, labels, n, args)
        seconds = time.perf_counter() - t0
        m = evaluate(x, "digits", labels=labels)
        rows.append({"data": "digits", "method": name, "scale": scale, "accuracy": m["classifier_accuracy"],
                     "fid": m["fid"], "precision": m["precision"], "recall": m["recall"], "seconds": seconds})
        print(f"digits  {name:24s} {scale:5g}: accuracy {m['classifier_accuracy']:.3f} FID {m['fid']:.3f} "
              f"({seconds:.0f} s)", flush=True)
    return rows


def shapes_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from denoisekit.eval.alignment import alignment_prompts, rendered_shapes, shapes_attribute_network, text_alignment
    from denoisekit.eval.report import evaluate
    from denoisekit.train.run import load_model

    model = load_model(ensure_run("configs/shapes-text.yaml", Path(args.text_run), args.threads))
    shape, data = model.image_shape, model.config.data.options
    net = shapes_attribute_network(shape[-1])
    n = args.n_text
    real, captions = rendered_shapes(n, 10_000 + args.seed, shape[-1], max_shapes=data.get("max_shapes", 3),
                                     holdout=tuple(data.get("holdout", ())))
    unseen = alignment_prompts("unseen", n, seed=args.seed, holdout=tuple(data.get("holdout", ())))
    rows = []
    for name, scale, guidance in methods(args.text_scales, []):
        t0 = time.perf_counter()
        x = draw(model, guidance, captions, n, args)
        seconds = time.perf_counter() - t0
        seen = text_alignment(x, captions, net)
        # Unseen pairs for plain CFG only (it halves the run; the variants' trend follows from the seen rows).
        new = (text_alignment(draw(model, guidance, unseen, n, args), unseen, net) if name == "CFG"
               else {"alignment": float("nan")})
        m = evaluate(x, real, features=net)
        rows.append({"data": "shapes", "method": name, "scale": scale, "alignment": seen["alignment"],
                     "alignment_unseen": new["alignment"], "fid": m["fid"], "precision": m["precision"],
                     "recall": m["recall"], "seconds": seconds,
                     **{f"match_{a}": seen[a] for a in ("count", "kind", "colour", "size", "position")}})
        print(f"shapes  {name:24s} {scale:5g}: alignment {seen['alignment']:.3f} (unseen {new['alignment']:.3f}) "
              f"FID {m['fid']:.3f} ({seconds:.0f} s)", flush=True)
    ceiling = text_alignment(real, captions, net)["alignment"]
    rows.append({"data": "shapes", "method": "real renders (ceiling)", "scale": float("nan"), "alignment": ceiling,
                 "alignment_unseen": float("nan"), "fid": float("nan")})
    return rows


def best_fid(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for r in rows:
        key = (r["data"], r["method"])
        if not math.isnan(r["fid"]) and (key not in best or r["fid"] < best[key][0]):
            best[key] = (r["fid"], r["scale"])
    return {k: v[1] for k, v in best.items()}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in ("digits", "shapes") if any(r["data"] == d for r in rows)]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.6 * len(datasets)), squeeze=False)
    for row, data in zip(axes, datasets):
        sub = [r for r in rows if r["data"] == data and not math.isnan(r["scale"])]
        score = "accuracy" if data == "digits" else "alignment"
        for method in dict.fromkeys(r["method"] for r in sub):
            pts = sorted((r["scale"], r[score], r["fid"], r.get("alignment_unseen")) for r in sub if r["method"] == method)
            s = [p[0] for p in pts]
            line, = row[0].plot(s, [p[1] for p in pts], marker="o", label=method)
            if data == "shapes" and not any(p[3] is None or math.isnan(p[3]) for p in pts):
                row[0].plot(s, [p[3] for p in pts], marker="x", ls="--", color=line.get_color())
            row[1].plot(s, [p[2] for p in pts], marker="o", label=method)
        row[0].set(xlabel="guidance scale", ylabel=score + (" (dashed: unseen pairs)" if data == "shapes" else ""),
                   title=f"{data}: {score}")
        row[1].set(xlabel="guidance scale", ylabel="FID (denoisekit feature network)", title=f"{data}: FID",
                   yscale="log")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    best = best_fid(rows)
    lines = [SECTION, "",
             f"`python benchmarks/guidance.py` ({meta['date']}; {meta['machine']}; {meta['sampler']} at {meta['nfe']} NFE "
             f"on the runs' grids (their sample.schedule: Karras); {meta['n_digits']} digits and {meta['n_text']} shapes samples per point, the same "
             f"seeds at every point; {meta['total_s']:.0f} s). Guidance scale 1 is the unguided conditional model; "
             f"classifier guidance acts on the model's unconditional mode (scale 0 = unconditional). FID in the "
             f"feature space of denoisekit's digits network / shapes attribute network. **Bold**: the best FID of "
             f"each method. Plot: `benchmarks/guidance.png`.", ""]
    digits = [r for r in rows if r["data"] == "digits"]
    if digits:
        lines += ["### Digits (class-conditional, `configs/digits-demo.yaml`)", "",
                  "| method | scale | class accuracy | FID | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
        for r in digits:
            fid = f"**{r['fid']:.3f}**" if best.get((r["data"], r["method"])) == r["scale"] else f"{r['fid']:.3f}"
            lines.append(f"| {r['method']} | {r['scale']:g} | {r['accuracy']:.3f} | {fid} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} |")
        lines.append("")
    shapes = [r for r in rows if r["data"] == "shapes"]
    if shapes:
        lines += ["### Shapes text-to-image (`configs/shapes-text.yaml`)", "",
                  "| method | scale | alignment (seen) | alignment (unseen pairs) | kind | colour | count | size | position | FID |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in shapes:
            if math.isnan(r["scale"]):
                lines.append(f"| {r['method']} | | {r['alignment']:.3f} | | | | | | | |")
                continue
            fid = f"**{r['fid']:.3f}**" if best.get((r["data"], r["method"])) == r["scale"] else f"{r['fid']:.3f}"
            m = [f"{r[f'match_{a}']:.3f}" for a in ("kind", "colour", "count", "size", "position")]
            unseen = "" if math.isnan(r["alignment_unseen"]) else f"{r['alignment_unseen']:.3f}"
            lines.append(f"| {r['method']} | {r['scale']:g} | {r['alignment']:.3f} | {unseen} | "
                         f"{' | '.join(m)} | {fid} |")
        lines.append("")
    lines += [meta["summary"], ""]
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    out = []
    for data, score in (("digits", "accuracy"), ("shapes", "alignment")):
        sub = [r for r in rows if r["data"] == data and r["method"] == "CFG"]
        if not sub:
            continue
        best = min(sub, key=lambda r: r["fid"])
        lo, hi = min(r["scale"] for r in sub), max(r["scale"] for r in sub)
        first, last = (next(r for r in sub if r["scale"] == s) for s in (lo, hi))
        where = "an interior minimum" if lo < best["scale"] < hi else "its minimum at an end of the range"
        out.append(f"{data}, CFG: {score} {first[score]:.3f} at scale {lo:g} -> {last[score]:.3f} at {hi:g}; FID has "
                   f"{where}, {best['fid']:.3f} at scale {best['scale']:g}.")
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--digits-run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--classifier", default=str(ROOT / "runs" / "digits-classifier"))
    ap.add_argument("--text-run", default=str(ROOT / "runs" / "shapes-text"))
    ap.add_argument("--only", choices=("digits", "shapes"), default=None)
    ap.add_argument("--scales", default="1,1.5,2,3,4,6")
    ap.add_argument("--cg-scales", default="0,1,2,4,8")
    ap.add_argument("--text-scales", default="1,2,3,5,7")
    ap.add_argument("--n-digits", type=int, default=1000)
    ap.add_argument("--n-text", type=int, default=300)
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="few samples and scales (smoke test)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.scales = [float(s) for s in args.scales.split(",")]
    args.cg_scales = [float(s) for s in args.cg_scales.split(",")]
    args.text_scales = [float(s) for s in args.text_scales.split(",")]
    if args.quick:
        args.scales, args.cg_scales, args.n_digits, args.n_text, args.nfe = [1, 3], [0, 2], 100, 40, 8
        args.text_scales = [1, 3]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    saved = ROOT / "runs" / "guidance.json"
    rows = []
    if args.only in (None, "digits"):
        rows += digits_rows(args)
    elif saved.is_file():  # keep the other dataset's rows from the last run
        rows += [r for r in json.loads(saved.read_text()) if r["data"] == "digits"]
    if args.only in (None, "shapes"):
        rows += shapes_rows(args)
    elif saved.is_file():
        rows += [r for r in json.loads(saved.read_text()) if r["data"] == "shapes"]
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"torch {torch.__version__}, {platform.machine()} CPU, "
            f"{args.threads} threads", "sampler": args.sampler, "nfe": args.nfe, "n_digits": args.n_digits,
            "n_text": args.n_text, "total_s": time.perf_counter() - start, "summary": summary(rows)}
    text = markdown(rows, meta)
    print(text)
    if not args.quick:
        saved.parent.mkdir(exist_ok=True)
        saved.write_text(json.dumps(rows, indent=1, default=float))
    if not args.no_write:
        plot(rows, FIGURE)
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
