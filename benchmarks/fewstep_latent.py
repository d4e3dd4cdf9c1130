"""Few-step students in latent space: FID against NFE on unconditional 64x64 shapes, beside their teacher.

The latent half of issue 15's benchmark (``benchmarks/fewstep.py`` is the pixel half, on digits). The teacher is
``configs/shapes64-latent.yaml``: an EDM U-Net on the 4 x 16 x 16 latents of the f=4 KL autoencoder
``configs/autoencoder/shapes64-f4.yaml`` (trained first, as in ``benchmarks/latent.py``), ``--teacher-steps`` of
batch 16. Students, each an ordinary latent run of the training engine (its samples decoded by the teacher's
autoencoder):

- progressive distillation (Salimans & Ho 2022): rounds 16 -> 8 -> 4 -> 2 -> 1 DDIM steps, ``--round-steps`` each;
- consistency distillation (Song et al. 2023) from the teacher's weights, Heun teacher steps, multistep
  consistency sampling at 1, 2, 4 and 8 NFE;
- consistency training (iCT, Song & Dhariwal 2023) from the teacher's weights as ECT starts, no teacher in the loss;
- MeanFlow (Geng et al. 2025) from scratch on the same latents (no teacher): the same U-Net with a second time
  input, a rectified flow, the ``meanflow`` sampler;
- a learned solver (Shaul et al. 2024) fitted to the teacher's ODE at 5 NFE.

The teacher samples with DPM-Solver++(2M) (Karras grid, its best sampler) at 1-50 NFE and with DDIM. ``--n``
samples per row, the same per-image seeds in every row, decoded to 64x64, scored against ``--n`` held-out renders
(a seed training never uses) in the shapes attribute network's feature space, beside the real-vs-real floor.
The CPU time of each training is printed beside the table. Runs go to ``--work``; a finished run is reused, so
``--only NAME`` trains one arm (after its prerequisites) and several can train side by side, one core each,
before a run without ``--only`` measures everything and writes the table.

    python benchmarks/fewstep_latent.py --only autoencoder         # ~30 CPU-minutes, once
    python benchmarks/fewstep_latent.py --only teacher & python benchmarks/fewstep_latent.py --only meanflow
    python benchmarks/fewstep_latent.py --only pd & python benchmarks/fewstep_latent.py --only cd
    python benchmarks/fewstep_latent.py --write                    # the rest, then the RESULTS.md section
    python benchmarks/fewstep_latent.py --quick --work /tmp/fl     # a smoke run (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section  # noqa: E402
from fewstep_plot import plot  # noqa: E402
from latent import REAL_SEED, autoencoder, held_out, metrics  # noqa: E402

from denoisekit.data.transforms import tensor_to_uint8, uint8_to_tensor  # noqa: E402
from denoisekit.generation import Guidance, generate  # noqa: E402
from denoisekit.pipelines.tune import tune_solver  # noqa: E402
from denoisekit.samplers.tuning.solver import load_solver, save_solver  # noqa: E402
from denoisekit.train.halving import distill_progressively  # noqa: E402
from denoisekit.train.run import load_model, run_info  # noqa: E402
from denoisekit.train.trainer import train_from_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes64-latent.yaml"
BUDGETS = ("round_steps", "cd_steps", "ict_steps", "tune_iters", "tune_samples", "n", "quick")  # in the record
SECTION = "## Few-step students in latent space (64x64 shapes, issue 15)"
ARMS = ("autoencoder", "teacher", "meanflow", "pd", "cd", "ict", "solver")
#: MeanFlow on the teacher's latents: the preset's U-Net with a second time input, a rectified flow (the
#: settings of configs/digits-meanflow.yaml).
MEANFLOW = ["train.recipe=meanflow", "model.second_time=true", "model.time_scale=0.001", "process.name=flow",
            "process.prediction=flow", "loss.noise_levels=logit_normal", "loss.p_mean=-0.4", "loss.p_std=1.0",
            "loss.weighting=simple", "fewstep.interval_ratio=0.25", "fewstep.adaptive_p=1.0",
            "fewstep.adaptive_c=0.001", "sample.sampler=meanflow", "sample.nfe=1", "sample.schedule=auto"]


def cpu_seconds(fn) -> float:
    """Process CPU seconds of ``fn()`` per thread."""
    start = time.process_time()
    fn()
    return (time.process_time() - start) / torch.get_num_threads()


class Bench:
    """The runs under ``work`` and how each is trained (skipped when already finished)."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.work = a, a.work.resolve()
        self.teacher = self.work / "teacher"
        self.cpu_dir = self.work / "cpu"  # one file per training: arms may train side by side

    def record(self, name: str, seconds: float) -> None:
        self.cpu_dir.mkdir(exist_ok=True)
        path = self.cpu_dir / f"{name.split(' (')[0].replace(' ', '-')}.json"
        before = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0  # a resumed training adds its part
        path.write_text(json.dumps({"name": name, "seconds": before + seconds}) + "\n")

    def cpu(self) -> dict[str, float]:
        records = [json.loads(f.read_text()) for f in sorted(self.cpu_dir.glob("*.json"))]
        return {r["name"]: r["seconds"] for r in records}

    def done(self, run: Path, steps: int) -> bool:
        try:
            return run_info(run)["step"] >= steps
        except FileNotFoundError:
            return False

    def train(self, name: str, config: Path, run: Path, steps: int, overrides: list[str]) -> None:
        if not self.done(run, steps):
            self.record(name, cpu_seconds(lambda: train_from_config(
                config, run, overrides=[f"train.steps={steps}", "sample.n=0", *overrides], resume=True,
                progress=False)))

    def student(self, recipe: str) -> list[str]:
        return [f"train.recipe={recipe}", f"init.from_run={self.teacher}", "process.prediction=consistency",
                "optim.lr=2e-4", "optim.warmup_steps=0"]

    def arm(self, name: str) -> Any:
        a, w = self.a, self.work
        if name == "autoencoder":
            return autoencoder(w, a.ae_steps)
        self.arm("autoencoder")
        base = [f"latent.autoencoder={w / 'ae-f4'}"] + (["data.length=512", "optim.warmup_steps=2"] if a.quick else [])
        if name == "meanflow":
            return self.train("MeanFlow (from scratch)", CONFIG, w / "meanflow", a.mf_steps, base + MEANFLOW)
        self.train("teacher", CONFIG, self.teacher, a.teacher_steps, base)
        if name == "pd":
            if not self.done(w / "pd" / "nfe-1", a.round_steps):
                self.record("progressive (4 rounds)", cpu_seconds(lambda: distill_progressively(
                    self.teacher, w / "pd", 8, overrides=[f"train.steps={a.round_steps}", "sample.n=0",
                                                          "optim.warmup_steps=0"], progress=False)))
            return [w / "pd" / f"nfe-{k}" for k in (8, 4, 2, 1)]
        teacher_config = self.teacher / "config.yaml"
        if name == "cd":
            return self.train("consistency distillation", teacher_config, w / "cd", a.cd_steps,
                              self.student("consistency_distill") + [f"teacher.run={self.teacher}"])
        if name == "ict":
            return self.train("consistency training (iCT)", teacher_config, w / "ict", a.ict_steps,
                              self.student("consistency_train") + ["fewstep.s0=10", "fewstep.s1=80"])
        if name == "solver":
            path = w / "solver-5.json"
            if not path.is_file():
                start = time.process_time()
                tuned = tune_solver(load_model(self.teacher), 5, n_samples=a.tune_samples, eval_samples=64,
                                    iters=a.tune_iters, batch_size=64, guidance=Guidance(), ref_tol=1e-4)
                self.record("learned solver (5 NFE)", (time.process_time() - start) / torch.get_num_threads())
                save_solver(path, tuned.solver, {"error": tuned.error, "baseline_error": tuned.baseline_error,
                                                 "baseline_schedule": tuned.schedule})
            return load_solver(path)
        raise ValueError(f"unknown arm {name!r}; allowed: {', '.join(ARMS)}")


def row(bench: Bench, name: str, run: Path, nfe: int, ref: torch.Tensor, seed: int = 0,
        **options: Any) -> dict[str, Any]:
    """One table row: ``--n`` decoded samples of ``run`` (seeds ``seed, ..., seed + n - 1``), their metrics and
    sampling CPU time; the first 16 are kept (uint8) in ``<run>/samples-<sampler>-nfe<k>[-s<seed>].npz``."""
    n = bench.a.n
    start = time.process_time()
    x = generate(load_model(run), n, None, guidance=Guidance(), seed=seed, nfe=nfe, **options)
    cpu = (time.process_time() - start) / torch.get_num_threads()
    x = x.clamp(-1, 1)
    key = (options.get("sampler") or ("solver" if "solver" in options else "default")) + (f"-s{seed}" if seed else "")
    np.savez_compressed(run / f"samples-{key}-nfe{nfe}.npz", images=tensor_to_uint8(x[:16]))
    with warnings.catch_warnings():  # 64x64 samples and renders are both resized to the feature network's 32x32
        warnings.simplefilter("ignore", UserWarning)
        m = metrics(x, ref)
    print(f"{name} @ {nfe}: FID {m['fid']:.2f}", flush=True)
    return {"name": name, "nfe": nfe, **{k: m[k] for k in ("fid", "precision", "recall")}, "sample_cpu_s": cpu,
            "samples": str(run / f"samples-{key}-nfe{nfe}.npz")}


def measure(bench: Bench) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    a, w, teacher = bench.a, bench.work, bench.teacher
    pd, tuned = bench.arm("pd"), bench.arm("solver")
    for name in ("cd", "ict", "meanflow"):
        bench.arm(name)
    ref = held_out(a.n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        floor = metrics(held_out(a.n, REAL_SEED), ref)
    teacher_nfes, nfes = ((1, 2, 4, 8, 20, 50), (1, 2, 4, 8)) if not a.quick else ((1, 2, 20), (1, 2))
    rows = [row(bench, "teacher, DPM-Solver++(2M) karras", teacher, k, ref, sampler="dpmpp_2m", schedule="karras")
            for k in teacher_nfes]
    rows += [row(bench, "teacher, DDIM karras", teacher, k, ref, sampler="ddim", schedule="karras")
             for k in teacher_nfes[:-1]]
    rows.append(row(bench, "teacher, learned solver (tuned at 5 NFE)", teacher, 5, ref, solver=tuned))
    rows += [row(bench, "progressive distillation", run, k, ref) for run, k in zip(pd, (8, 4, 2, 1)) if k in nfes]
    for name, run in (("consistency distillation", w / "cd"), ("consistency training (iCT)", w / "ict")):
        rows += [row(bench, name, run, k, ref, sampler="consistency", schedule="karras") for k in nfes]
    rows += [row(bench, "MeanFlow (from scratch, no teacher)", w / "meanflow", k, ref, sampler="meanflow")
             for k in nfes]
    rows.append(row(bench, "MeanFlow's u(z, t, t) as a flow, flow Heun", w / "meanflow", 20, ref, sampler="flow_heun"))
    # how far FID moves with the noises alone: the teacher's best row again on the next n seeds
    other = row(bench, "teacher, DPM-Solver++(2M) karras, other seeds", teacher, 20, ref, seed=a.n,
                sampler="dpmpp_2m", schedule="karras")
    ae = json.loads((w / "ae-f4" / "metrics.json").read_text())
    meta = {"floor": floor, "other_seeds_fid": other["fid"], "teacher_steps": run_info(teacher)["step"],
            "mf_steps": run_info(w / "meanflow")["step"],
            "cpu": bench.cpu(), "solver_error": tuned.meta["error"], "solver_baseline": tuned.meta["baseline_error"],
            "solver_schedule": tuned.meta["baseline_schedule"],
            "ae": {k: ae.get(k) for k in ("step", "psnr", "rfid", "rfid_floor")}}
    return rows, meta


TITLE = "64x64 shapes (latent 4x16x16), unconditional"


GRID_NAMES = {"teacher, DPM-Solver++(2M) karras": "teacher", "progressive distillation": "progressive",
              "consistency distillation": "CD", "consistency training (iCT)": "iCT",
              "MeanFlow (from scratch, no teacher)": "MeanFlow"}  # short row labels of the sample grid


def figures(rows: list[dict[str, Any]], meta: dict[str, Any], plot_to: Path, grid: Path) -> None:
    """FID against NFE per method (``fewstep_plot``), and a grid of 8 samples for a row of each method at 1 and
    2 NFE."""
    from denoisekit.eval.plotting import save_grid

    plot([{"title": TITLE, "floor": meta["floor"]["fid"], "rows": rows}], plot_to)
    picks = [("teacher, DPM-Solver++(2M) karras", 2), ("teacher, DPM-Solver++(2M) karras", 20),
             ("progressive distillation", 1), ("progressive distillation", 2), ("consistency distillation", 1),
             ("consistency distillation", 2), ("consistency training (iCT)", 2), ("MeanFlow (from scratch, no teacher)", 1),
             ("MeanFlow (from scratch, no teacher)", 2)]
    groups, labels = [], []
    for name, nfe in picks:
        r = next(r for r in rows if r["name"] == name and r["nfe"] == nfe)
        with np.load(r["samples"]) as f:
            groups.append(torch.stack([uint8_to_tensor(im) for im in f["images"][:8]]))
        labels.append(f"{GRID_NAMES[name]}, {nfe} NFE")
    save_grid(groups, grid, labels=labels, columns=8)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], a: argparse.Namespace, plot_path: str, grid_path: str) -> str:
    floor, ae = meta["floor"]["fid"], meta["ae"]
    lines = [SECTION, "", f"`python benchmarks/fewstep_latent.py --write` (unconditional 64x64 shapes, 1-3 shapes; "
             f"`configs/shapes64-latent.yaml`: an EDM U-Net on the 4x16x16 latents of the f=4 autoencoder, trained "
             f"{meta['teacher_steps']} steps of batch 16; progressive rounds 16 -> 1 of {a.round_steps} steps; "
             f"consistency distillation {a.cd_steps} steps; iCT {a.ict_steps} steps; MeanFlow {meta['mf_steps']} "
             f"steps from scratch; a learned solver of {a.tune_iters} Adam steps on {a.tune_samples} noises; students "
             f"at lr 2e-4 and batch 16; {a.n} samples per row decoded to 64x64, unguided, per-image seeds shared across "
             f"rows; FID / precision / recall against {a.n} held-out renders with the shapes attribute network, "
             f"real-vs-real floor {floor:.2f}; the autoencoder {ae['step']} steps, held-out PSNR {ae['psnr']:.1f} dB, "
             f"rFID {ae['rfid']:.2f} against a floor of {ae['rfid_floor']:.2f}). Figures: `{plot_path}` (FID against NFE), "
             f"`{grid_path}` (8 samples a row: the teacher at 2 and 20 NFE; progressive at 1, 2; consistency distillation "
             f"at 1, 2; iCT at 2; MeanFlow at 1, 2).", "",
             "| model | NFE | FID | precision | recall | sampling CPU s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['nfe']} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['sample_cpu_s']:.1f} |")
    lines += ["", "Training CPU time (per thread): " + ", ".join(f"{k} {v:.0f} s" for k, v in meta["cpu"].items()) + ".",
              "", f"The learned solver's endpoint error against the teacher's exact ODE (held-out noises, latent "
              f"space): {meta['solver_error']:.4f}, DPM-Solver++(2M) on the {meta['solver_schedule']} grid at 5 NFE "
              f"{meta['solver_baseline']:.4f}."]
    best = next(r["fid"] for r in rows if r["name"] == "teacher, DPM-Solver++(2M) karras" and r["nfe"] == 20)
    solver = next(r["fid"] for r in rows if r["name"].startswith("teacher, learned solver"))
    lines += ["", f"Sampling noise: the teacher's 20-NFE row on the next {a.n} seeds scores {meta['other_seeds_fid']:.2f} "
              f"(against {best:.2f}), so differences of about {abs(meta['other_seeds_fid'] - best):.1f} FID are "
              "within what the noises alone move."]
    lines += ["", f"Against the teacher's 20-NFE FID ({best:.2f}; the targets: 1 step within 1.5x, 2 steps within "
              f"1.2x, a 2-step student below the learned solver's {solver:.2f} at 5 NFE):", ""]
    for name in dict.fromkeys(r["name"] for r in rows if not r["name"].startswith("teacher")):
        got = {r["nfe"]: r["fid"] for r in rows if r["name"] == name}
        if 1 in got and 2 in got:
            lines.append(f"- {name}: {got[1] / best:.2f}x at 1 step, {got[2] / best:.2f}x at 2 "
                         f"({'below' if got[2] < solver else 'above'} the learned solver at 5 NFE).")
    if not a.quick:  # the quick run has no 8-NFE rows to read
        lines += ["", reading(rows, floor, a.round_steps)]
    return "\n".join(lines)


def reading(rows: list[dict[str, Any]], floor: float, round_steps: int) -> str:
    """The section's how-to-read paragraph: each method's shape against NFE, beside the papers' numbers."""
    def fid(name: str, nfe: int) -> float:
        return next(r["fid"] for r in rows if r["name"].startswith(name) and r["nfe"] == nfe)

    teacher = "teacher, DPM-Solver++(2M)"
    return (f"How to read this. Unlike digits, the floor ({floor:.2f}) is well below the teacher "
            f"({fid(teacher, 20):.2f} at 20 NFE), so the students' distance from the teacher is measured, not hidden "
            f"under the floor. The teacher fails at 1-2 NFE ({fid(teacher, 1):.0f} and {fid(teacher, 2):.0f}: "
            f"speckled colour blobs) and needs 8 ({fid(teacher, 8):.2f}). Progressive distillation degrades gracefully "
            f"as the rounds halve the steps ({fid('progressive', 8):.2f} at 8, {fid('progressive', 2):.2f} at 2, "
            f"{fid('progressive', 1):.2f} at 1); Salimans & Ho report 2.57 / 4.51 / 9.12 at 8 / 2 / 1 steps on "
            f"CIFAR-10 (Inception features, 50k updates a round against {round_steps} here). Consistency distillation is "
            f"nearly flat in NFE ({fid('consistency distillation', 1):.2f} at 1, "
            f"{fid('consistency distillation', 8):.2f} at 8): re-noising and mapping again does not lower the "
            f"error of its one-step map here. iCT needs 2 steps ({fid('consistency training', 1):.1f} at 1, "
            f"{fid('consistency training', 2):.2f} at 2); ECT reports 3.60 / 2.11 at 1 / 2 steps against its "
            f"teacher's 2.04 (1.76x / 1.03x), Song & Dhariwal's iCT 2.51 / 2.24 from scratch on CIFAR-10. MeanFlow, "
            f"trained from scratch with no teacher, matches the teacher at 2 steps ({fid('MeanFlow', 2):.2f}) and is "
            f"its weakest student at 1 ({fid('MeanFlow', 1):.1f}); Geng et al. report 3.43 / 2.20 at 1 / 2 NFE on "
            f"ImageNet 256 (MF-XL/2, 240 epochs). Not on this set: LCM-LoRA (the set is unconditional, so there is "
            f"no guided teacher to distil; its rows are on digits above) and reflow (it needs a flow teacher; "
            f"`benchmarks/reflow.py` on digits).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-fewstep-latent")
    p.add_argument("--only", choices=ARMS, default=None, help="train this arm (and what it needs) and stop")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps (default: its config's 4500)")
    p.add_argument("--teacher-steps", type=int, default=5000)
    p.add_argument("--round-steps", type=int, default=500)
    p.add_argument("--cd-steps", type=int, default=1500)
    p.add_argument("--ict-steps", type=int, default=1000)
    p.add_argument("--mf-steps", type=int, default=3000)
    p.add_argument("--tune-iters", type=int, default=100)
    p.add_argument("--tune-samples", type=int, default=128)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    p.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and metadata here")
    p.add_argument("--from-json", type=Path, default=None,
                   help="render the section from a recorded --json file instead of measuring (no training)")
    a = p.parse_args()
    if a.from_json is not None:  # the table and its prose again, from the record (the figures need the samples)
        record = json.loads(a.from_json.read_text())
        vars(a).update(record["meta"]["budgets"])
        text = markdown(record["rows"], record["meta"], a, "benchmarks/fewstep_latent.png",
                        "benchmarks/fewstep_latent_samples.png")
        print(text)
        if a.write:
            write_section(text, SECTION)
        return
    if a.quick:
        a.ae_steps, a.teacher_steps, a.round_steps, a.cd_steps, a.ict_steps, a.mf_steps = 30, 20, 2, 4, 4, 4
        a.tune_iters, a.tune_samples, a.n = 2, 8, 64
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bench = Bench(a)
    bench.work.mkdir(parents=True, exist_ok=True)
    if a.only is not None:
        bench.arm(a.only)
        return
    rows, meta = measure(bench)
    here = a.write and not a.quick
    folder = Path(__file__).parent if here else bench.work
    plot_to, grid = folder / "fewstep_latent.png", folder / "fewstep_latent_samples.png"
    figures(rows, meta, plot_to, grid)
    show = [str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f) for f in (plot_to, grid)]
    text = markdown(rows, meta, a, *show)
    print(text)
    record = a.json or (Path(__file__).with_name("fewstep_latent.json") if here else None)
    if record is not None:  # the rows without the kept samples' paths: the figure is drawn from these
        kept = [{k: v for k, v in r.items() if k != "samples"} for r in rows]
        meta["budgets"] = {k: getattr(a, k) for k in BUDGETS}
        record.write_text(json.dumps({"title": TITLE, "floor": meta["floor"]["fid"], "rows": kept, "meta": meta},
                                     indent=1) + "\n")
    if here:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
