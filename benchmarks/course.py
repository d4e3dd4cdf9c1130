"""KAIST CS492D's 2-D assignment settings on denoisekit's defaults: Chamfer distance of 2048 samples to 2048
data points over seeds, against the course's thresholds (DDPM 1000 steps: 20; DDIM 50 steps: 40; DPM-Solver
50 steps: 40), with the data-vs-data floor.

The course's data: scikit-learn's ``make_swiss_roll`` with noise 0 and the hole, columns 0 and 2, normalised
by the global mean and standard deviation and scaled by 2; 5000 iterations of batch 128 at lr 1e-3 (flow
matching 5e-4). Each seed draws its own training set, network and noise; samplers reuse the seed's run.

    python benchmarks/course.py --seeds 5          # the table of benchmarks/RESULTS.md
    python benchmarks/course.py --seeds 1 --steps 500   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from denoisekit.data.toy2d import save_points
from denoisekit.eval.toy2d import chamfer_distance
from denoisekit.losses import DiffusionLoss
from denoisekit.samplers.run import sample
from denoisekit.train.recipes.toy2d import train_toy2d
from denoisekit.train.toy2d import Toy2DConfig, load_run

#: (name, process, prediction, sampler, NFE, schedule, course threshold or None)
SETTINGS = [
    ("DDPM 1000", "ddpm", "eps", "ddpm", 1000, "trailing", 20.0),
    ("DDIM 50", "ddpm", "eps", "ddim", 50, "trailing", 40.0),
    ("DPM-Solver-1 50", "ddpm", "eps", "dpm_solver_1", 50, "auto", 40.0),
    ("DPM-Solver-2 50", "ddpm", "eps", "dpm_solver_2", 50, "auto", 40.0),
    ("flow matching, Euler 50", "flow", "flow", "flow_euler", 50, "auto", None),
]


def course_swiss_roll(n: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n, noise=0.0, random_state=seed, hole=True)
    x = x[:, [0, 2]]
    return torch.from_numpy((x - x.mean()) / x.std() * 2).float()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--model", default="{}", help="MLP config overrides as JSON, e.g. '{\"hidden\": 256}'")
    p.add_argument("--ema", type=float, default=Toy2DConfig.ema_decay, help="EMA decay of the exported weights")
    p.add_argument("--flow-sigma-min", type=float, default=0.0,
                   help="the flow run's sigma_min (0: rectified flow; > 0: Lipman et al.'s OT path, OT-CFM)")
    p.add_argument("--flow-only", action="store_true", help="train and score only the flow-matching setting")
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = [s for s in SETTINGS if s[1] == "flow"] if args.flow_only else SETTINGS
    rows: dict[str, list[float]] = {name: [] for name, *_ in settings}
    floors, seconds = [], {"ddpm": 0.0, "flow": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            data = Path(tmp) / f"roll-{seed}.npy"
            save_points(data, course_swiss_roll(args.n_train, seed))
            target = course_swiss_roll(2048, 10_000 + seed)
            floors.append(chamfer_distance(course_swiss_roll(2048, 20_000 + seed), target))
            runs = {}
            for process, prediction, lr in (("ddpm", "eps", 1e-3), ("flow", "flow", 5e-4)):
                if args.flow_only and process != "flow":
                    continue
                kwargs = {"sigma_min": args.flow_sigma_min} if process == "flow" and args.flow_sigma_min else {}
                cfg = Toy2DConfig(out=f"{tmp}/{process}-{seed}", data=str(data), process=process, process_kwargs=kwargs,
                                  prediction=prediction, steps=args.steps, batch=128, lr=lr, seed=seed,
                                  loss=DiffusionLoss(), model_config=json.loads(args.model), ema_decay=args.ema)
                start = time.perf_counter()
                runs[process] = load_run(train_toy2d(cfg, progress=False))[0]
                seconds[process] += time.perf_counter() - start
            for name, process, _, sampler, nfe, schedule, _ in settings:
                with torch.no_grad():
                    x = sample(runs[process], (2048, 2), sampler=sampler, nfe=nfe, schedule=schedule,
                               generator=torch.Generator().manual_seed(seed))
                rows[name].append(chamfer_distance(x, target))
            print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()), file=sys.stderr,
                  flush=True)
    print(f"Chamfer distance (sum, 2048 samples vs 2048 data points), {args.seeds} seeds, {args.steps} steps of "
          f"batch 128; data-vs-data floor {statistics.mean(floors):.1f}; training "
          f"{seconds['ddpm'] / args.seeds:.0f} s (DDPM) and {seconds['flow'] / args.seeds:.0f} s (flow) per seed\n")
    print("| setting | threshold | mean | min | max | runs under threshold |")
    print("|---|---|---|---|---|---|")
    for name, *_, threshold in settings:
        v = rows[name]
        under = f"{sum(x < threshold for x in v)} of {len(v)}" if threshold is not None else "-"
        print(f"| {name} | {threshold if threshold is not None else '-'} | {np.mean(v):.1f} | {min(v):.1f} | "
              f"{max(v):.1f} | {under} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
