"""Few-step students beside their teacher: FID (digits feature network) against NFE, on class-conditional 8x8 digits.

The teacher is a diffusion run (default: ``configs/digits-demo.yaml``, EDM, trained here for ``--teacher-steps``).
Students, each an ordinary run of the training engine:

- progressive distillation (Salimans & Ho 2022), ``denoisekit distill-progressive``: rounds 8 -> 4 -> 2 -> 1 DDIM
  steps, ``--round-steps`` training steps each, every student on its own grid;
- consistency distillation (Song et al. 2023), ``train.recipe: consistency_distill`` from the teacher's weights
  (Heun teacher steps on 18 Karras levels), sampled with multistep consistency sampling at 1, 2 and 4 NFE.

The teacher is sampled with DPM-Solver++(2M) on the Karras grid (its best sampler here) and with DDIM, at 1-20
NFE. Everything unguided (CFG 1: the students learned the teacher's unguided denoiser), ``--n`` images with
labels ``i % 10``, per-image seeds shared across rows; FID / precision / recall against the digits train split
with its real-vs-real floor. CPU time of each student's training is printed beside it.

    python benchmarks/fewstep.py --write                         # the RESULTS.md table (~30 CPU-minutes)
    python benchmarks/fewstep.py --teacher runs/digits --quick   # a smoke run on an existing teacher
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section  # noqa: E402

from denoisekit.eval.report import evaluate  # noqa: E402
from denoisekit.generation import Guidance, generate  # noqa: E402
from denoisekit.train.halving import distill_progressively  # noqa: E402
from denoisekit.train.run import load_model, run_info  # noqa: E402
from denoisekit.train.trainer import train_from_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cpu_train(fn) -> tuple[object, float]:
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def fid_row(name: str, run: Path, n: int, **options) -> dict:
    model = load_model(run)
    labels = torch.arange(n) % 10
    start = time.perf_counter()
    x = generate(model, n, labels, guidance=Guidance(cfg_scale=1.0), seed=0, **options)
    wall = time.perf_counter() - start
    with warnings.catch_warnings():  # 8x8 samples and references are both resized to the feature network's 16x16
        warnings.simplefilter("ignore", UserWarning)
        m = evaluate(x.clamp(-1, 1), ref="digits", labels=labels)
    return {"name": name, "nfe": options.get("nfe", model.defaults.nfe), "fid": m["fid"], "floor": m["floor"]["fid"],
            "precision": m["precision"], "recall": m["recall"], "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=None, help="an existing teacher run (default: train one)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-fewstep")
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument("--round-steps", type=int, default=400)
    p.add_argument("--cd-steps", type=int, default=800)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    a = p.parse_args()
    if a.quick:
        a.teacher_steps, a.round_steps, a.cd_steps, a.n = 20, 4, 4, 100
    torch.manual_seed(0)
    cpu: dict[str, float] = {}
    teacher = a.teacher
    if teacher is None:
        teacher = a.work / "teacher"
        _, cpu["teacher"] = cpu_train(lambda: train_from_config(
            ROOT / "configs" / "digits-demo.yaml", teacher, overrides=[f"train.steps={a.teacher_steps}"]
            + (["optim.warmup_steps=2"] if a.quick else []),
            resume=True, progress=False))
    pd, cpu["progressive (4 rounds)"] = cpu_train(lambda: distill_progressively(
        teacher, a.work / "pd", 8, overrides=[f"train.steps={a.round_steps}", "sample.n=0", "optim.warmup_steps=0"], progress=False))
    cd = a.work / "cd"
    _, cpu["consistency distillation"] = cpu_train(lambda: train_from_config(
        teacher / "config.yaml", cd, resume=True, progress=False, overrides=[
            "train.recipe=consistency_distill", f"teacher.run={teacher}", f"init.from_run={teacher}",
            "process.prediction=consistency", f"train.steps={a.cd_steps}", "sample.n=0", "optim.lr=3e-4",
            "optim.warmup_steps=0"]))
    rows = []
    for nfe in (1, 2, 4, 8, 20):
        rows.append(fid_row("teacher, DPM-Solver++(2M) karras", teacher, a.n, sampler="dpmpp_2m", schedule="karras",
                            nfe=nfe))
    for nfe in (1, 2, 4, 8, 20):
        rows.append(fid_row("teacher, DDIM karras", teacher, a.n, sampler="ddim", schedule="karras", nfe=nfe))
    for run in pd:
        rows.append(fid_row("progressive distillation", run, a.n))
    for nfe in (1, 2, 4):
        rows.append(fid_row("consistency distillation", cd, a.n, sampler="consistency", schedule="karras", nfe=nfe))
    floor = rows[0]["floor"]
    lines = ["## Few-step students (progressive and consistency distillation)", "",
             f"`python benchmarks/fewstep.py` (class-conditional 8x8 digits, a `configs/digits-demo.yaml` teacher trained "
             f"{run_info(teacher)['step']} steps; progressive rounds of {a.round_steps} steps; consistency distillation "
             f"{a.cd_steps} steps; {a.n} unguided samples per row, labels i % 10; FID with the digits feature network, "
             f"real-vs-real floor {floor:.3f}).", "",
             "| model | NFE | FID | precision | recall | sampling wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['nfe']} | {r['fid']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['wall']:.2f} |")
    lines += ["", "Training CPU time: " + ", ".join(f"{k} {v:.0f} s" for k, v in cpu.items()) + "."]
    text = "\n".join(lines)
    print(text)
    if a.write:
        write_section(text, lines[0])


if __name__ == "__main__":
    main()
