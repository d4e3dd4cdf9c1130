"""Image-conditioned diffusion (Palette) and the super-resolution cascade, measured on shapes.

1. Restoration: the presets ``configs/palette-{colorize,sr-8to16,inpaint}.yaml`` are trained (if their
   run is missing) and restore ``--n`` held-out renders (a seed never used in training). Scores: the
   consistency error with the input (grey of the output vs the grey input; the output downsampled vs
   the low-res input; known pixels), the MSE to the original, and FID against held-out renders in the
   feature space of denoisekit's shapes attribute network; beside the classic baseline of each task
   (the grey image as RGB; bicubic upsampling; the hole filled with the mean of the known pixels).
2. Cascade vs direct at equal total training time (Ho et al. 2021): an unconditional 8x8 base model,
   then 2x super-resolution 8->16 and 16->32 with noise-conditioning augmentation, against one
   unconditional 32x32 model of the same width; the cascade's budget is split 20/30/50% between its
   stages, and each training run's number of steps is set from a timed probe of its own step, so
   every arm spends ``--minutes`` of process CPU time in all. Scores: FID of 32x32 samples.

    python benchmarks/palette.py                   # about 30 minutes on 2 cores; rewrites its RESULTS.md section
    python benchmarks/palette.py --quick --no-write
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from _common import shapes_renders, train_diffusion, write_section  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Image-conditioned diffusion"
TASKS = {"colorize": "palette-colorize", "super_resolution": "palette-sr-8to16", "inpaint": "palette-inpaint"}
HELD_OUT_SEED = 77_777


def train(config: Any, out: Path) -> Path:
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.train.trainer import train_from_config

    if latest_checkpoint(out / "checkpoints") is None:
        print(f"training {out.name} ({config.train.steps} steps)", flush=True)
        train_from_config(config, out, progress=False)
    return out


def preset(name: str, *overrides: str) -> Any:
    from denoisekit.train.config import load_config

    return load_config(ROOT / "configs" / f"{name}.yaml", overrides)


def held_out(n: int, size: int, max_shapes: int) -> torch.Tensor:
    return shapes_renders(n, HELD_OUT_SEED, size, max_shapes)


def baseline(task: str, conditioner: Any, source: Any) -> torch.Tensor:
    from denoisekit.data.degrade import upsample

    if task == "colorize":
        return source.expand(-1, 3, -1, -1)
    if task == "super_resolution":
        return upsample(source, conditioner.config.factor, "bicubic").clamp(-1, 1)
    image, mask = source
    known = 1 - mask
    mean = (image * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp(min=1)
    return image * known + mean * mask


def fid(x: torch.Tensor, ref: torch.Tensor) -> float:
    from denoisekit.eval.alignment import shapes_attribute_network
    from denoisekit.eval.report import evaluate

    return evaluate(x, ref, features=shapes_attribute_network(x.shape[-1]))["fid"]


def restoration_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from denoisekit._utils import seeded_generators
    from denoisekit.pipelines.palette import restore
    from denoisekit.train.run import load_model

    rows = []
    for task, name in TASKS.items():
        cfg = preset(name, *([f"train.steps={args.steps}"] if args.steps else []))
        model = load_model(train(cfg, Path(args.runs) / name))
        cfg, shape, cond = model.config, model.image_shape, model.condition.conditioner
        truth = held_out(args.n, shape[-1], cfg.data.options.get("max_shapes", 3))
        gens = seeded_generators(0, args.n)
        source = cond.degrade(truth, gens)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = restore(model, cond, source, sampler="dpmpp_2m", nfe=args.nfe, generator=gens)  # the run's grid
        seconds = time.perf_counter() - t0
        ref = held_out(args.n, shape[-1], cfg.data.options.get("max_shapes", 3))  # same renders: FID to the truth set
        for label, out in (("Palette", x), (BASELINES[task], baseline(task, cond, source))):
            rows.append({"task": task, "method": label, "consistency": cond.consistency(out, source).mean().item(),
                         "mse": (out - truth).pow(2).mean().item(), "fid": fid(out, ref),
                         "seconds": seconds if label == "Palette" else float("nan"), "steps": cfg.train.steps})
            print(f"{task:16s} {label:22s} consistency {rows[-1]['consistency']:.4f} MSE {rows[-1]['mse']:.4f} "
                  f"FID {rows[-1]['fid']:.3f}", flush=True)
    return rows


BASELINES = {"colorize": "grey as RGB", "super_resolution": "bicubic", "inpaint": "mean fill"}


def cascade_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from denoisekit._utils import seeded_generators
    from denoisekit.generation import Guidance, generate
    from denoisekit.pipelines.palette import cascade
    from denoisekit.train.config import config_from_dict, config_to_dict
    from denoisekit.train.run import load_model

    budget = args.minutes * 60

    def unconditional(name: str, size: int, **model: Any) -> Any:
        d = config_to_dict(preset(name, "sample.n=0"))
        d["condition"] = {"kind": "none"}
        d["model"].update(concat_channels=0, **model)
        d["data"]["size"] = size
        return config_from_dict(d)

    arms = {"base 8x8": (unconditional("palette-sr-8to16", 8, channel_mult=[1, 2], attention_levels=[1]), 0.2),
            "SR 8->16": (preset("palette-sr-8to16", "sample.n=0"), 0.3),
            "SR 16->32": (preset("palette-sr-16to32", "sample.n=0"), 0.5),
            "direct 32x32": (unconditional("palette-sr-16to32", 32), 1.0)}
    runs: dict[str, tuple[Any, Any, int]] = {}
    work = Path(args.runs) / "cascade"
    for name, (cfg, share) in arms.items():
        out = work / name.replace(" ", "_").replace(">", "").replace("-", "")
        info = train_diffusion(cfg, out, budget * share)
        print(f"{name}: {info['steps']} steps", flush=True)
        model = load_model(out)
        runs[name] = (model, model.config, model.config.train.steps)
    n = args.n
    ref = held_out(n, 32, 2)
    gens = seeded_generators(1, n)
    stages = [(runs[k][0], runs[k][0].condition.conditioner) for k in ("SR 8->16", "SR 16->32")]
    with torch.no_grad():
        base, mid, top = cascade(runs["base 8x8"][0], None, stages, n, sampler="dpmpp_2m", nfe=args.nfe,
                                 generator=gens)  # each run on its own grid (sample.schedule)
        direct = generate(runs["direct 32x32"][0], n, sampler="dpmpp_2m", nfe=args.nfe, guidance=Guidance(),
                          seed=1).clamp(-1, 1)
    from denoisekit.eval.plotting import save_grid

    save_grid([top[:16], direct[:16]], work / "cascade_vs_direct.png", labels=["cascade", "direct"], aligned=True,
              columns=16)
    steps = {k: v[2] for k, v in runs.items()}
    return [{"method": f"cascade 8 -> 16 -> 32 ({steps['base 8x8']} + {steps['SR 8->16']} + {steps['SR 16->32']} "
                       f"steps)", "fid": fid(top, ref), "fid16": fid(mid, held_out(n, 16, 2))},
            {"method": f"direct 32x32 ({steps['direct 32x32']} steps)", "fid": fid(direct, ref), "fid16": float("nan")}]


def markdown(rows: list[dict[str, Any]], crows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [SECTION, "", f"`python benchmarks/palette.py` ({meta['date']}; {meta['machine']}; {meta['total_s']:.0f} s). "
             f"Shapes (1-2 shapes), {meta['n']} held-out renders per task, DPM-Solver++(2M) at {meta['nfe']} NFE. "
             "Consistency: mean squared disagreement of the output with its input (grey, low-res or known pixels); "
             "MSE: to the original; FID: against the held-out renders, shapes attribute network features.", ""]
    if rows:
        lines += ["| task | method | training steps | consistency | MSE to original | FID |", "|---|---|---:|---:|---:|---:|"]
        for r in rows:
            steps = r["steps"] if r["method"] == "Palette" else ""
            lines.append(f"| {r['task']} | {r['method']} | {steps} | {r['consistency']:.4f} | {r['mse']:.4f} | "
                         f"{r['fid']:.3f} |")
        lines.append("")
    if crows:
        lines += [f"Cascade vs direct 32x32 at equal training budget ({meta['minutes']:g} min of CPU time per arm, "
                  f"{meta['n']} samples; samples: `runs/palette/cascade/cascade_vs_direct.png`):", "",
                  "| model | FID at 32x32 | FID of the 16x16 stage |", "|---|---:|---:|"]
        for r in crows:
            f16 = "" if r["fid16"] != r["fid16"] else f"{r['fid16']:.3f}"
            lines.append(f"| {r['method']} | {r['fid']:.3f} | {f16} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "palette"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--steps", type=int, default=0, help="override the presets' training steps")
    ap.add_argument("--minutes", type=float, default=10.0, help="cascade / direct training budget per arm")
    ap.add_argument("--only", choices=("restore", "cascade"), default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.nfe, args.steps, args.minutes, args.runs = 64, 8, 30, 0.3, str(ROOT / "runs" / "palette-quick")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = restoration_rows(args) if args.only in (None, "restore") else []
    crows = cascade_rows(args) if args.only in (None, "cascade") else []
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"torch {torch.__version__}, {platform.machine()} CPU, "
            f"{args.threads} threads", "n": args.n, "nfe": args.nfe, "minutes": args.minutes,
            "total_s": time.perf_counter() - start}
    text = markdown(rows, crows, meta)
    print(text)
    if not args.no_write:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
