"""KAIST CS492D's 2-D assignment settings on denoisekit's defaults: Chamfer distance of 2048 samples to 2048
data points over seeds, against the course's thresholds (DDPM 1000 steps: 20; DDIM 50 steps: 40; DPM-Solver
50 steps: 40), beside two floors and a baseline network trained in the same run.

The course's data: scikit-learn's ``make_swiss_roll`` with noise 0 and the hole, columns 0 and 2, normalised
by the global mean and standard deviation and scaled by 2; 5000 iterations of batch 128 at lr 1e-3 (flow
matching 5e-4). Each seed draws its own training set, networks and noise; samplers reuse the seed's runs.

The floors, per seed (the 2048-point target is normalised by its own statistics, as the course's is):

- data vs data: another 2048 points, drawn and normalised on their own, against the target (the issue's
  real-vs-real reference; it counts the normalisation's sampling error twice);
- perfect model: 2048 fresh points normalised as the training set is, against the target: what a model that
  had learned its training distribution exactly would score.

    python benchmarks/course.py --seeds 5          # the table of benchmarks/RESULTS.md
    python benchmarks/course.py --seeds 1 --steps 500 --nets timelinear   # a smoke run
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
from denoisekit.models import MODELS
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
#: The course's learning rates.
LR = {"ddpm": 1e-3, "flow": 5e-4}


def raw_roll(n: int, seed: int) -> np.ndarray:
    """``n`` points of scikit-learn's Swiss roll (noise 0, the hole), columns 0 and 2, unnormalised."""
    from sklearn.datasets import make_swiss_roll

    return make_swiss_roll(n, noise=0.0, random_state=seed, hole=True)[0][:, [0, 2]]


def normalise(x: np.ndarray, like: np.ndarray | None = None) -> torch.Tensor:
    """The course's normalisation: minus the global mean, over the global std, times 2 (of ``like``, else ``x``)."""
    ref = x if like is None else like
    return torch.from_numpy((x - ref.mean()) / ref.std() * 2).float()


def course_swiss_roll(n: int, seed: int) -> torch.Tensor:
    return normalise(raw_roll(n, seed))


def describe(v: list[float], threshold: float | None) -> str:
    under = f"{sum(x < threshold for x in v)} of {len(v)}" if threshold is not None else "-"
    return (f"{threshold if threshold is not None else '-'} | {np.mean(v):.1f} | {min(v):.1f} | {max(v):.1f} | "
            f"{under} | {' / '.join(f'{x:.1f}' for x in v)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--nets", default=f"{Toy2DConfig.model},mlp",
                   help=f"networks to train, comma-separated: {', '.join(MODELS)} (default: train2d's default, "
                        f"{Toy2DConfig.model}, and the residual MLP, the default before it, as the baseline)")
    p.add_argument("--model", default="{}", help="network config overrides as JSON, e.g. '{\"hidden\": 256}'")
    p.add_argument("--ema", type=float, default=Toy2DConfig.ema_decay, help="EMA decay of the exported weights")
    p.add_argument("--grad-clip", type=float, default=Toy2DConfig.grad_clip, help="gradient clipping (0: none)")
    p.add_argument("--warmup", type=int, default=Toy2DConfig.warmup, help="linear lr warm-up steps")
    p.add_argument("--flow-sigma-min", type=float, default=0.0,
                   help="the flow run's sigma_min (0: rectified flow; > 0: Lipman et al.'s OT path, OT-CFM)")
    p.add_argument("--only", choices=("ddpm", "flow"), default=None,
                   help="train and score only the DDPM settings or only the flow-matching one")
    args = p.parse_args()
    torch.set_num_threads(1)
    nets = args.nets.split(",")
    settings = [s for s in SETTINGS if args.only in (None, s[1])]
    rows: dict[tuple[str, str], list[float]] = {(net, s[0]): [] for net in nets for s in settings}
    floors: dict[str, list[float]] = {"data vs data": [], "perfect model": []}
    seconds = {(net, process): 0.0 for net in nets for process in LR}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            data = Path(tmp) / f"roll-{seed}.npy"
            save_points(data, course_swiss_roll(args.n_train, seed))
            target = course_swiss_roll(2048, 10_000 + seed)
            floors["data vs data"].append(chamfer_distance(course_swiss_roll(2048, 20_000 + seed), target))
            perfect = normalise(raw_roll(2048, 20_000 + seed), like=raw_roll(args.n_train, seed))
            floors["perfect model"].append(chamfer_distance(perfect, target))
            for net in nets:
                runs = {}
                for process, prediction in (("ddpm", "eps"), ("flow", "flow")):
                    if args.only not in (None, process):
                        continue
                    kwargs = {"sigma_min": args.flow_sigma_min} if process == "flow" and args.flow_sigma_min else {}
                    cfg = Toy2DConfig(out=f"{tmp}/{net}-{process}-{seed}", data=str(data), process=process,
                                      process_kwargs=kwargs, prediction=prediction, steps=args.steps, batch=128,
                                      lr=LR[process], seed=seed, loss=DiffusionLoss(), model=net,
                                      model_config=json.loads(args.model), ema_decay=args.ema,
                                      grad_clip=args.grad_clip, warmup=args.warmup)
                    start = time.perf_counter()
                    runs[process] = load_run(train_toy2d(cfg, progress=False))[0]
                    seconds[net, process] += time.perf_counter() - start
                for name, process, _, sampler, nfe, schedule, _ in settings:
                    with torch.no_grad():
                        x = sample(runs[process], (2048, 2), sampler=sampler, nfe=nfe, schedule=schedule,
                                   generator=torch.Generator().manual_seed(seed))
                    rows[net, name].append(chamfer_distance(x, target))
            print(f"seed {seed}: floors " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in floors.items()) + "; "
                  + "; ".join(f"{net} {name} {v[-1]:.1f}" for (net, name), v in rows.items()),
                  file=sys.stderr, flush=True)
    seeds = f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}"
    timing = ", ".join(f"{net} {process} {s / args.seeds:.0f} s" for (net, process), s in seconds.items() if s)
    print(f"Chamfer distance (sum, 2048 samples vs 2048 data points), {seeds}, {args.steps} steps of batch 128 "
          f"(lr {LR['ddpm']:g}, flow {LR['flow']:g}); EMA {args.ema:g}, grad clip {args.grad_clip:g}, warm-up "
          f"{args.warmup}; training per seed: {timing}\n")
    print("| network | setting | threshold | mean | min | max | runs under threshold | per seed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label in (("data vs data", "floor: data vs data"), ("perfect model", "floor: perfect model")):
        print(f"| - | {label} | {describe(floors[name], None)} |")
    for net in nets:
        for name, *_, threshold in settings:
            print(f"| {net} | {name} | {describe(rows[net, name], threshold)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
