"""Few-step students beside their teacher: FID (digits feature network) against NFE, on class-conditional 8x8 digits.

The teacher is a diffusion run (default: ``configs/digits-demo.yaml``, EDM, trained here for ``--teacher-steps``).
Students, each an ordinary run of the training engine:

- progressive distillation (Salimans & Ho 2022), ``denoisekit distill-progressive``: rounds 8 -> 4 -> 2 -> 1 DDIM
  steps, ``--round-steps`` training steps each, every student on its own grid;
- consistency distillation (Song et al. 2023), ``train.recipe: consistency_distill`` from the teacher's weights
  (Heun teacher steps on 18 Karras levels), sampled with multistep consistency sampling at 1, 2 and 4 NFE;
- improved consistency training (Song & Dhariwal 2023), ``train.recipe: consistency_train``, started from the
  teacher's weights (as ECT, Geng et al. 2024) but trained on the data alone, with a short curriculum;
- LCM-LoRA (Luo et al. 2023), ``train.recipe: lcm_lora``: a LoRA on the teacher distilled from its guided ODE
  (CFG ``--lcm-cfg``), sampled with guidance 1 at 1, 2 and 4 NFE beside the teacher with the same guidance;
- a learned solver (``denoisekit tune``, Shaul et al. 2024) fitted to the teacher at 5 NFE;
- MeanFlow (Geng et al. 2025), ``train.recipe: meanflow`` (``configs/digits-meanflow.yaml``): no teacher, one
  network trained from scratch for ``--mf-steps`` (or an existing run, ``--meanflow``), sampled with the meanflow
  sampler at 1, 2 and 4 NFE, and its instantaneous velocity ``u(z, t, t)`` (the same network as a flow-matching
  model) with flow Heun at 20 NFE.

The teacher is sampled with DPM-Solver++(2M) on the Karras grid (its best sampler here) and with DDIM, at 1-20
NFE. Everything unguided (CFG 1: the students learned the teacher's unguided denoiser) but the LCM-LoRA's
comparison, the teacher at CFG ``--lcm-cfg`` (the LCM-LoRA samples at 1: the guidance is in its weights; each
guided NFE is two network passes, one batch of 2B); ``--n`` images with labels ``i % 10``, per-image seeds shared across rows; FID / precision / recall against the digits train split
with its real-vs-real floor. CPU time of each student's training is printed beside it.

    python benchmarks/fewstep.py --write                         # the RESULTS.md table (~30 CPU-minutes)
    python benchmarks/fewstep.py --teacher runs/digits --quick   # a smoke run on an existing teacher
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section  # noqa: E402

from denoisekit.eval.report import evaluate  # noqa: E402
from denoisekit.generation import Guidance, generate  # noqa: E402
from denoisekit.pipelines.tune import tune_solver  # noqa: E402
from denoisekit.train.halving import distill_progressively  # noqa: E402
from denoisekit.train.run import load_model, run_info  # noqa: E402
from denoisekit.train.trainer import train_from_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cpu_train(fn) -> tuple[object, float]:
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def fid_row(name: str, run: Path, n: int, cfg: float = 1.0, **options) -> dict:
    model = load_model(run)
    labels = torch.arange(n) % 10
    start = time.perf_counter()
    x = generate(model, n, labels, guidance=Guidance(cfg_scale=cfg), seed=0, **options)
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
    p.add_argument("--ict-steps", type=int, default=400)
    p.add_argument("--lcm-steps", type=int, default=400)
    p.add_argument("--lcm-cfg", type=float, default=1.5, help="the guidance the LCM-LoRA distils (the demo's)")
    p.add_argument("--tune-iters", type=int, default=100, help="Adam steps of the 5-NFE learned solver")
    p.add_argument("--mf-steps", type=int, default=2000, help="MeanFlow's training steps (from scratch)")
    p.add_argument("--meanflow", type=Path, default=None, help="an existing MeanFlow run (default: train one)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the rows here (default with --write: benchmarks/fewstep.json, for the figure)")
    a = p.parse_args()
    if a.quick:
        a.teacher_steps, a.round_steps, a.cd_steps, a.n = 20, 4, 4, 100
        a.ict_steps, a.lcm_steps, a.tune_iters = 4, 4, 2
        a.mf_steps = 4
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
    ict = a.work / "ict"
    _, cpu["consistency training (iCT)"] = cpu_train(lambda: train_from_config(
        teacher / "config.yaml", ict, resume=True, progress=False, overrides=[
            "train.recipe=consistency_train", f"init.from_run={teacher}", "process.prediction=consistency",
            f"train.steps={a.ict_steps}", "sample.n=0", "optim.lr=3e-4", "optim.warmup_steps=0", "fewstep.s0=10",
            "fewstep.s1=80"]))
    lcm = a.work / "lcm"
    _, cpu["LCM-LoRA"] = cpu_train(lambda: train_from_config(
        teacher / "config.yaml", lcm, resume=True, progress=False, overrides=[
            "train.recipe=lcm_lora", f"teacher.run={teacher}", f"init.from_run={teacher}",
            "process.prediction=consistency", f"train.steps={a.lcm_steps}", "train.batch_size=64", "sample.n=0",
            "sample.sampler=consistency", "sample.nfe=4", "sample.cfg_scale=1", "optim.lr=2e-3",
            "optim.warmup_steps=0", "lora.rank=8", "lora.convs=true", "fewstep.levels=100", "lcm.skip=5",
            f"lcm.cfg_min={a.lcm_cfg}", f"lcm.cfg_max={a.lcm_cfg}"]))
    tuned, cpu["learned solver (5 NFE)"] = cpu_train(lambda: tune_solver(
        load_model(teacher), 5, n_samples=128, eval_samples=64, iters=a.tune_iters, batch_size=64,
        guidance=Guidance(cfg_scale=1.0), ref_tol=1e-4))
    mf = a.meanflow
    if mf is None:
        mf = a.work / "meanflow"
        _, cpu["MeanFlow (from scratch)"] = cpu_train(lambda: train_from_config(
            ROOT / "configs" / "digits-meanflow.yaml", mf, resume=True, progress=False,
            overrides=[f"train.steps={a.mf_steps}", "sample.n=0"] + (["optim.warmup_steps=2"] if a.quick else [])))
    rows = []
    for nfe in (1, 2, 4, 8, 20, 50):
        rows.append(fid_row("teacher, DPM-Solver++(2M) karras", teacher, a.n, sampler="dpmpp_2m", schedule="karras",
                            nfe=nfe))
    for nfe in (1, 2, 4, 8, 20):
        rows.append(fid_row("teacher, DDIM karras", teacher, a.n, sampler="ddim", schedule="karras", nfe=nfe))
    rows.append(fid_row("teacher, learned solver (tuned at 5 NFE)", teacher, a.n, solver=tuned.solver, nfe=5))
    for run in pd:
        rows.append(fid_row("progressive distillation", run, a.n))
    for nfe in (1, 2, 4, 8):
        rows.append(fid_row("consistency distillation", cd, a.n, sampler="consistency", schedule="karras", nfe=nfe))
    for nfe in (1, 2, 4, 8):
        rows.append(fid_row("consistency training (iCT)", ict, a.n, sampler="consistency", schedule="karras", nfe=nfe))
    for nfe in (1, 2, 4, 8, 20):
        rows.append(fid_row(f"teacher, DPM-Solver++(2M) karras, CFG {a.lcm_cfg:g}", teacher, a.n, cfg=a.lcm_cfg,
                            sampler="dpmpp_2m", schedule="karras", nfe=nfe))
    for nfe in (1, 2, 4, 8):
        rows.append(fid_row(f"LCM-LoRA (CFG {a.lcm_cfg:g} distilled), CFG 1", lcm, a.n, sampler="consistency",
                            schedule="karras", nfe=nfe))
    for nfe in (1, 2, 4, 8):
        rows.append(fid_row("MeanFlow (from scratch, no teacher)", mf, a.n, sampler="meanflow", nfe=nfe))
    rows.append(fid_row("MeanFlow's u(z, t, t) as a flow, flow Heun", mf, a.n, sampler="flow_heun", nfe=20))
    floor = rows[0]["floor"]
    lines = ["## Few-step students (progressive and consistency distillation)", "",
             f"`python benchmarks/fewstep.py` (class-conditional 8x8 digits, a `configs/digits-demo.yaml` teacher trained "
             f"{run_info(teacher)['step']} steps; progressive rounds of {a.round_steps} steps; consistency distillation "
             f"{a.cd_steps} steps; iCT {a.ict_steps} steps; LCM-LoRA {a.lcm_steps} steps of batch 64; a learned solver "
             f"of {a.tune_iters} Adam steps; MeanFlow {run_info(mf)['step']} steps from scratch; "
             f"{a.n} samples per row, unguided unless the row says CFG, labels i % 10; "
             f"FID with the digits feature network, real-vs-real floor {floor:.3f}).", "",
             "| model | NFE | FID | precision | recall | sampling wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['nfe']} | {r['fid']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['wall']:.2f} |")
    lines += ["", "Training CPU time: " + ", ".join(f"{k} {v:.0f} s" for k, v in cpu.items()) + ".",
              "", f"The learned solver's endpoint error against the teacher's exact ODE (held-out noises): "
              f"{tuned.error:.4f}, DPM-Solver++(2M) on the {tuned.schedule} grid at 5 NFE {tuned.baseline_error:.4f}."]
    best = next(r["fid"] for r in rows if r["name"] == "teacher, DPM-Solver++(2M) karras" and r["nfe"] == 20)
    mf_fid = [r["fid"] for r in rows if r["name"].startswith("MeanFlow (")][:3]
    lines += ["", "MeanFlow, trained from scratch without a teacher: FID " + " / ".join(f"{v:.3f}" for v in mf_fid)
              + " at 1 / 2 / 4 NFE, " + " / ".join(f"{v / best:.2f}x" for v in mf_fid) + f" the teacher's 20-NFE "
              f"FID ({best:.3f}). Geng et al. 2025 report FID 3.43 at 1 NFE and 2.20 at 2 on ImageNet 256 (DiT-XL/2, "
              "from scratch) and 2.92 at 1 NFE on CIFAR-10."]
    text = "\n".join(lines)
    print(text)
    record = a.json or (Path(__file__).with_name("fewstep.json") if a.write else None)
    if record is not None:
        record.write_text(json.dumps({"title": "8x8 digits (pixel), class-conditional", "floor": floor,
                                      "rows": rows}, indent=1) + "\n")
    if a.write:
        write_section(text, lines[0])


if __name__ == "__main__":
    main()
