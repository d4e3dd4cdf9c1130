"""KAIST CS492D's image assignments at CPU scale (issue 11, item 2): the presets of configs/course/ on the three-class
``shapes3`` images (the course's AFHQ), each sampled as its assignment grades it, FID against held-out renders in
the ``shapes3`` feature network's space beside the real-vs-real floor, and the CPU minutes of each training.

The budget is CPU scale, not the assignments': each preset's ``train.steps`` (2000 of batch 32) fits about 10
minutes of one idle CPU core, where the assignments train 100k steps for about 14 GPU hours. FID numbers are in
this feature space, not Inception's: the course's thresholds (FID < 20 for DDPM, < 30 with CFG) do not transfer;
read each against the floor. DPM-Solver (assignment 6) samples the DDIM + CFG run of assignment 2, as the course
does: no training of its own. DDPM samples over 100 of its 1000 steps (the assignment's 1000 would cost 10x).
More rows, not an assignment: the DDIM + CFG run predicting v instead of eps (a diagnosis: is eps-prediction what is
slow at this budget?), and latent diffusion (docs/course/latent.md) on the same data, its autoencoder's training
counted in its CPU minutes. Measured rows are kept in ``RUNS/rows.json``; a rerun samples
only the missing ones.

    python benchmarks/course_images.py                               # the table of benchmarks/RESULTS.md
    python benchmarks/course_images.py --steps 4 --n 40 --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import write_section

#: (assignment, preset, sampler, NFE, schedule, the course's CFG w or None for an unconditional model)
ROWS = [
    ("1: DDPM", "ddpm", "ddpm", 100, "trailing", None),
    ("2: DDIM + CFG", "ddim-cfg", "ddim", 50, "trailing", 0.0),
    ("2: DDIM + CFG", "ddim-cfg", "ddim", 50, "trailing", 7.5),
    ("6: DPM-Solver-1 (the assignment-2 run)", "ddim-cfg", "dpm_solver_1", 20, "auto", 7.5),
    ("6: DPM-Solver-2 (the assignment-2 run)", "ddim-cfg", "dpm_solver_2", 20, "auto", 7.5),
    ("7: flow matching + CFG", "flow-cfg", "flow_euler", 50, "auto", 0.0),
    ("7: flow matching + CFG", "flow-cfg", "flow_euler", 50, "auto", 7.5),
    ("(diagnosis: assignment 2 with v-prediction)", "ddim-cfg-v", "ddim", 50, "trailing", 0.0),
    ("(diagnosis: assignment 2 with v-prediction)", "ddim-cfg-v", "ddim", 50, "trailing", 7.5),
    ("(latent diffusion, docs/course/latent.md)", "latent", "dpmpp_2m", 20, "karras", 0.0),
    ("(latent diffusion, docs/course/latent.md)", "latent", "dpmpp_2m", 20, "karras", 1.0),
]
#: The latent preset's first stage: the autoencoder of docs/course/latent.md, trained before it (its CPU time counts).
AUTOENCODER = (Path(__file__).resolve().parents[1] / "configs" / "autoencoder" / "shapes-f4.yaml",
               ["data.name=shapes3", "train.steps=1000"])
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "course"
#: Runs that are a preset with overrides: the DDIM + CFG run predicting v (Salimans & Ho 2022) instead of eps, the
#: one change that tells whether eps-prediction is what is slow at this budget.
VARIANTS = {"ddim-cfg-v": ("ddim-cfg", ["process.prediction=v"])}
SECTION = "## The course's image settings (KAIST CS492D; issue 11)"


def cpu_seconds() -> float:
    """Process CPU time over threads: the work done, not the wait for a core on a shared machine."""
    return time.process_time() / torch.get_num_threads()


def train(preset: str, runs: Path, steps: int | None) -> dict:
    """Train ``configs/course/<preset>.yaml`` into ``runs/<preset>`` (no training preview), or reuse the finished run
    there; returns its steps and training CPU seconds (``budget.json``)."""
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.train.trainer import train_from_config

    out, meta = runs / preset, runs / preset / "budget.json"
    if latest_checkpoint(out / "checkpoints") is not None and meta.is_file():
        return json.loads(meta.read_text())
    overrides = ["sample.n=0"] + ([f"train.steps={steps}", "optim.warmup_steps=0"] if steps else [])
    t0 = cpu_seconds()
    if preset == "latent":
        from denoisekit.train.autoencoder import train_autoencoder

        ae = runs / "latent-autoencoder"
        config, ae_overrides = AUTOENCODER
        train_autoencoder(config, ae, overrides=ae_overrides + ([f"train.steps={steps}"] if steps else []),
                          progress=False)
        overrides.append(f"latent.autoencoder={ae}")
    base, extra = VARIANTS.get(preset, (preset, []))
    train_from_config(CONFIGS / f"{base}.yaml", out, overrides=overrides + extra, progress=False)
    from denoisekit.train.run import load_run

    info = {"steps": load_run(out)[1].train.steps, "train_cpu_s": cpu_seconds() - t0}
    if preset == "latent":
        info["autoencoder_steps"] = steps or 1000
    meta.write_text(json.dumps(info, indent=1) + "\n")
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs/bench-course-images"), help="where the runs go (reused)")
    p.add_argument("--n", type=int, default=500, help="samples per row (the assignments sample 500)")
    p.add_argument("--n-ref", type=int, default=1000, help="held-out real images (half of them make the floor)")
    p.add_argument("--steps", type=int, default=None, help="override every preset's train.steps (smoke runs)")
    p.add_argument("--only", nargs="*", default=None, help="presets to run (default: all)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args()
    torch.set_num_threads(1)

    import denoisekit
    from denoisekit.eval import evaluate
    from denoisekit.eval.shapes3 import shapes3_feature_network, shapes3_reference

    start = time.perf_counter()
    net = shapes3_feature_network()
    ref, _ = shapes3_reference(args.n_ref)
    rows = [r for r in ROWS if args.only is None or r[1] in args.only]
    store = args.runs / "rows.json"  # measured rows, kept: a rerun samples only what is missing
    done = json.loads(store.read_text()) if store.is_file() else {}
    trained, table = {}, []
    for assignment, preset, sampler, nfe, schedule, w in rows:
        key = f"{preset} {sampler} {nfe} {schedule} {w} n={args.n} ref={args.n_ref}"
        if key in done:
            table.append(done[key])
            continue
        if preset not in trained:
            trained[preset] = train(preset, args.runs, args.steps)
            print(f"{preset}: {trained[preset]['steps']} steps, {trained[preset]['train_cpu_s'] / 60:.1f} CPU min",
                  file=sys.stderr)
        run = denoisekit.load(args.runs / preset, device="cpu")
        t0 = cpu_seconds()
        out = run.generate(args.n, label=None if w is None else "all", cfg=None if w is None else w + 1,
                           sampler=sampler, nfe=nfe, schedule=schedule, seed=0, batch_size=100)
        sample_s = cpu_seconds() - t0
        m = evaluate(out.images, ref, labels=out.labels, features=net)
        table.append({"assignment": assignment, "preset": preset, "sampler": sampler, "nfe": nfe, "schedule": schedule,
                      "w": w, "fid": m["fid"], "floor": m["floor"]["fid"], "precision": m["precision"],
                      "recall": m["recall"], "accuracy": m.get("classifier_accuracy"), "sample_cpu_s": sample_s,
                      **trained[preset]})
        print(json.dumps(table[-1]), file=sys.stderr)
        done[key] = table[-1]
        store.write_text(json.dumps(done, indent=1) + "\n")
    text = render(table, net, args, time.perf_counter() - start)
    print(text)
    if not args.no_write:
        write_section(text, SECTION)
    return 0


def steps_note(row: dict) -> str:
    """The latent row's first stage, whose training is in its CPU minutes."""
    return f" (+ {row['autoencoder_steps']} of the autoencoder)" if "autoencoder_steps" in row else ""


def render(table: list[dict], net, args: argparse.Namespace, seconds: float) -> str:
    """The RESULTS.md section: one row per assignment setting, the floor beside each FID."""
    acc = net.info["test_accuracy_per_head"]
    lines = [SECTION, "",
             f"`python benchmarks/course_images.py` (torch {torch.__version__}, one thread, a 2-core machine shared with "
             f"other runs; {seconds / 60:.0f} min in all). The presets of `configs/course/` on `shapes3` (one circle, "
             "square or triangle per 32x32 image: the course's AFHQ, three classes), trained at CPU scale: 2000 steps "
             "of batch 32 each, about 10 minutes of one idle core (the assignments: 100k steps, about 14 GPU hours). "
             "The last rows are not an assignment: the DDIM + CFG run predicting v instead of eps "
             "(`--set process.prediction=v`, all else equal), and latent diffusion on the same data "
             "(`configs/course/latent.yaml`, 2000 steps of batch 64 on the 4x8x8 latents of an f=4 autoencoder "
             "trained 1000 steps first). "
             f"{args.n} samples per row (labels i mod 3 for the class models), as the assignments sample; FID against "
             f"{args.n_ref // 2} held-out renders in the feature space of the `shapes3` network (heads kind / colour / "
             f"size / region, held-out accuracy {' / '.join(f'{a:.3f}' for a in acc)}); floor: the other "
             f"{args.n_ref - args.n_ref // 2} held-out renders against the same ones. The course's w is `--cfg w + 1`.",
             "",
             "| assignment | preset | sampler, NFE | w (`--cfg`) | FID | floor | precision | recall | class accuracy "
             "| training: steps, CPU min | sampling CPU s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in table:
        w = "-" if r["w"] is None else f"{r['w']:g} ({r['w'] + 1:g})"
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {r['assignment']} | `{r['preset']}` | {r['sampler']}, {r['nfe']} ({r['schedule']}) | {w} | "
                     f"{r['fid']:.2f} | {r['floor']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {acc} | "
                     f"{r['steps']}{steps_note(r)}, {r['train_cpu_s'] / 60:.1f} | {r['sample_cpu_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
