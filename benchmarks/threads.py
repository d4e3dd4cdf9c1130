"""Training throughput of the demo preset when the machine is busy: torch threads and the OpenMP wait policy.

    python benchmarks/threads.py [--steps 30] [--rounds 5] [--quick] [--explore] [--no-write]

Each cell trains ``--steps`` steps of ``configs/digits-demo.yaml`` (1.2M-parameter U-Net, 8x8 digits, batch
128; after 3 warm-up steps, set-up not timed) in a fresh subprocess, so that the OpenMP runtime reads its
environment at start-up as it does under the CLI. Conditions: ``alone``, and ``beside one busy process`` (a
plain ``python -c "while True: pass"`` started a second before the cell and killed after it). Variants: 1
and 2 torch threads with the runtime's own wait policy, 2 threads with ``OMP_WAIT_POLICY=PASSIVE`` (torch's
CPU wheel uses GNU OpenMP, libgomp; ``--explore`` adds ``GOMP_SPINCOUNT=10000``, Intel's ``KMP_BLOCKTIME=0``,
which libgomp ignores, and 1 thread PASSIVE), and the CLI's default (the cell runs
:func:`denoisekit.cli.common.program_threads` and :func:`~denoisekit.cli.common.reexec_for_openmp` as
``denoisekit`` does without ``--threads``). In each round every variant runs alone and beside the busy
process back to back, the variants in an order that rotates from round to round, so that other load on a
shared machine hits every variant alike. Shown: the median over rounds of a cell's wall time as a ratio to
the same round's ``alone, 1 thread`` cell (the steadiest: on a machine shared with other jobs the spinning
``alone, 2 threads`` cell is itself a victim of their load), the median time scaled to 150 steps, and the
median of busy / alone of each variant (what the busy core costs it). Prints
markdown and rewrites the ``## Threads on a busy machine`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Threads on a busy machine"
OPENMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# name -> (torch threads or "default", environment of the cell)
VARIANTS: dict[str, tuple[int | str, dict[str, str]]] = {
    "1 thread": (1, {}),
    "2 threads": (2, {}),
    "2 threads, PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "default": ("default", {}),
}
EXTRA: dict[str, tuple[int | str, dict[str, str]]] = {  # --explore: the other knobs of libgomp
    "2 threads, GOMP_SPINCOUNT=10000": (2, {"GOMP_SPINCOUNT": "10000"}),
    "2 threads, KMP_BLOCKTIME=0": (2, {"KMP_BLOCKTIME": "0"}),
    "1 thread, PASSIVE": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
CONDITIONS = ("alone", "beside one busy process")
BASELINE = ("alone", "1 thread")  # the steadiest cell: no thread waits for another

ISSUE = ("Issue 19's measurement, for comparison (150 steps through `denoisekit train`, one run each, as ratios to "
         "its 1 thread alone): alone 37.1 s at 1 thread (1.00) and 27.7 s at 2 (0.75); beside one busy process "
         "35.0 s at 1 thread (0.94) and 209.6 s at 2 (5.65): busy / alone 0.94 at 1 thread, 7.57 at 2.")
CHOICE = ("The default (`denoisekit._threads`): one torch thread per core that other processes do not keep busy "
          "(their use of all cores over 0.2 s from `/proc/stat`, less this process's own; a core counts from half "
          "use), and with more than one thread a passive OpenMP wait (`OMP_WAIT_POLICY=PASSIVE`, unless the user "
          "set it or `GOMP_SPINCOUNT`), so that load which starts after the choice (a second run beside this one) "
          "costs its share instead of the spinning collapse of the *2 threads* column. `--threads N` and "
          "`OMP_NUM_THREADS` still win; `train2d` and `sample2d` keep 1 thread (small MLPs).")

CHILD = """
import json, os, sys, time
import yaml
import torch
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.trainer import Trainer

threads, steps, root, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if threads == "default":  # what the CLI does when --threads is not given (and it may start this again)
    import argparse
    from denoisekit.cli.common import program_threads, reexec_for_openmp
    sys.argv[0] = "denoisekit"  # the program's own name: what reexec_for_openmp starts again
    threads = program_threads(argparse.Namespace(threads=None))
    reexec_for_openmp(threads)
torch.set_num_threads(int(threads))
raw = yaml.safe_load(open(root + "/configs/digits-demo.yaml"))
cfg = config_from_dict(apply_overrides(raw, ["train.steps=100000", "train.save_every=0", "sample.n=0"]))
trainer = Trainer(cfg, out, progress=False)
for _ in range(3):
    trainer.train_step()
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(steps):
    trainer.train_step()
print(json.dumps({"threads": int(threads), "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "policy": os.environ.get("OMP_WAIT_POLICY", "unset")}))
"""


def cell_env(name: str, variants: dict[str, tuple[int | str, dict[str, str]]]) -> dict[str, str]:
    """The environment of a cell: this one without OpenMP settings, plus the variant's."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    return {**env, **variants[name][1], "TQDM_DISABLE": "1"}


def run_cell(name: str, variants: dict[str, tuple[int | str, dict[str, str]]], steps: int) -> dict[str, float]:
    threads = str(variants[name][0])
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", CHILD, threads, str(steps), str(ROOT), f"{tmp}/run"],
                             env=cell_env(name, variants), capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode:
        raise RuntimeError(f"cell {name!r} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = load
    return result


class Busy:
    """A plain Python busy loop for the duration of a ``with`` block (one core kept busy)."""

    def __enter__(self) -> Busy:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)  # let it reach the run queue before the cell starts
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(variants: dict[str, tuple[int | str, dict[str, str]]], steps: int, rounds: int
            ) -> dict[tuple[str, str], list[dict[str, float]]]:
    names = list(variants)
    cells: dict[tuple[str, str], list[dict[str, float]]] = {(c, n): [] for c in CONDITIONS for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:  # a variant alone and beside the busy process back to back: the pair sees one load
            for condition in (CONDITIONS if r % 2 == 0 else CONDITIONS[::-1]):
                if condition == "alone":
                    result = run_cell(name, variants, steps)
                else:
                    with Busy():
                        result = run_cell(name, variants, steps)
                cells[condition, name].append(result)
                print(f"round {r + 1}/{rounds}, {condition}, {name}: {result['wall']:.1f} s wall, "
                      f"{result['cpu']:.1f} s CPU, {result['threads']} thread(s), load {result['load']:.1f}",
                      flush=True)
    return cells


def table(cells: dict[tuple[str, str], list[dict[str, float]]], names: list[str], steps: int) -> list[str]:
    """Rows: each condition (ratio to the round's baseline; in brackets the median scaled to 150 steps, and the
    default's thread counts) and busy / alone per variant."""
    base = [run["wall"] for run in cells[BASELINE]]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for condition in CONDITIONS:
        row = []
        for name in names:
            runs = cells[condition, name]
            ratio = statistics.median(run["wall"] / b for run, b in zip(runs, base))
            wall = statistics.median(run["wall"] for run in runs) * 150 / steps
            used = "/".join(map(str, sorted({int(run["threads"]) for run in runs})))
            row.append(f"{ratio:.2f} ({wall:.0f} s" + (f", {used} thr" if name == "default" else "") + ")")
        lines.append(f"| {condition} | " + " | ".join(row) + " |")
    cost = [statistics.median(b["wall"] / a["wall"] for a, b in zip(cells[CONDITIONS[0], n], cells[CONDITIONS[1], n]))
            for n in names]
    lines.append("| busy / alone | " + " | ".join(f"{c:.2f}" for c in cost) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per cell (default 30)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5; medians are shown)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 5 steps, 1 round, RESULTS.md untouched")
    ap.add_argument("--explore", action="store_true", help="also GOMP_SPINCOUNT, KMP_BLOCKTIME, 1 thread PASSIVE")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.no_write = 5, 1, True
    variants = {**VARIANTS, **(EXTRA if args.explore else {})}
    start, load = time.perf_counter(), os.getloadavg()[0]
    cells = measure(variants, args.steps, args.rounds)
    import torch

    policies = sorted({str(run["policy"]) for c in CONDITIONS for run in cells[c, "default"]})
    lines = [SECTION, "",
             (f"`python benchmarks/threads.py --steps {args.steps} --rounds {args.rounds}` ({time.strftime('%Y-%m-%d')}; "
             f"torch {torch.__version__}, GNU OpenMP, {platform.machine()} CPU, {os.cpu_count()} cores shared with "
             f"other jobs; 1-minute load average {load:.1f} at start; {time.perf_counter() - start:.0f} s). "
             f"{args.steps} training steps of `configs/digits-demo.yaml` per cell, each in a fresh process. Wall time "
             f"as a ratio to the same round's *alone, 1 thread* cell, median of {args.rounds} interleaved rounds (in "
             f"brackets: the median wall time scaled to 150 steps); last row: the median of busy / alone of each "
             f"variant. Busy process: `python -c \"while True: pass\"`. The default's OMP_WAIT_POLICY: "
             f"{', '.join(policies)}."), ""]
    lines += table(cells, list(variants), args.steps)
    lines += ["", ISSUE, "", CHOICE]
    print("\n".join(lines))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _common import write_section

        write_section("\n".join(lines), SECTION)


if __name__ == "__main__":
    main()
