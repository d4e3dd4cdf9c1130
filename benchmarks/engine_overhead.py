"""What the one training engine costs against the loops it replaced: seconds per training step of the same
runs on the code before the engine (a git worktree at ``--old``, default the last commit before it) and on
this tree, in alternating rounds on one thread, as the ratio new / old (1.00: no overhead).

    python benchmarks/engine_overhead.py [--old REV] [--rounds 3] [--quick]

Runs: the diffusion trainer on the demo preset (8x8 digits, 1.2M-parameter U-Net, batch 128), the 2-D
trainer (MLP on moons, batch 256), and the VAE and DCGAN baselines on digits (batch 64).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_ENGINE = "d75e3e4"  # main before the training engine (issue 10's foundations)

# One snippet per run, valid on both trees: build the run, train `steps` steps, print seconds per step.
SNIPPETS = {
    "diffusion (demo preset)": """
import sys, time, yaml, torch
try:
    from denoisekit.train.config import config_from_dict, apply_overrides
except ImportError:
    from denoisekit.config import config_from_dict, apply_overrides
from denoisekit.train.trainer import Trainer
raw = yaml.safe_load(open(sys.argv[1] + '/configs/digits-demo.yaml'))
cfg = config_from_dict(apply_overrides(raw, ['train.steps=1000', 'train.save_every=0', 'sample.n=0', 'train.device=cpu']))
t = Trainer(cfg, sys.argv[2], progress=False)
for _ in range(3): t.train_step()
t0 = time.process_time()
for _ in range(STEPS): t.train_step()
print((time.process_time() - t0) / STEPS)
""",
    "2-D toy (moons, MLP)": """
import sys, time, torch
from denoisekit.train import Toy2DConfig, train_toy2d
cfg = dict(data='moons', n_train=4096, steps=STEPS, batch=256, log_every=STEPS, out=sys.argv[2])
t0 = time.process_time(); train_toy2d(Toy2DConfig(**cfg), progress=False); print((time.process_time() - t0) / STEPS)
""",
    "VAE (digits)": """
import sys, time
from denoisekit.train import ZooConfig, train_zoo
t0 = time.process_time(); train_zoo(ZooConfig(model='vae', steps=STEPS, log_every=STEPS, data_options={'size': 8}))
print((time.process_time() - t0) / STEPS)
""",
    "DCGAN (digits)": """
import sys, time
from denoisekit.train import ZooConfig, train_zoo
t0 = time.process_time(); train_zoo(ZooConfig(model='dcgan', steps=STEPS, log_every=STEPS, data_options={'size': 16}))
print((time.process_time() - t0) / STEPS)
""",
}


def time_step(src: Path, snippet: str, steps: int, work: Path) -> float:
    env_code = "import torch; torch.set_num_threads(1)\n" + snippet.replace("STEPS", str(steps))
    out = subprocess.run([sys.executable, "-c", env_code, str(src.parent), str(work)], check=True, text=True,
                         capture_output=True, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin",
                                                   "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=BEFORE_ENGINE, help="git revision of the code before the engine")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer steps and one round")
    args = ap.parse_args()
    steps = {"diffusion (demo preset)": 20, "2-D toy (moons, MLP)": 300, "VAE (digits)": 300, "DCGAN (digits)": 200}
    if args.quick:
        steps, args.rounds = {k: max(5, v // 5) for k, v in steps.items()}, 1
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(old), args.old],
                       check=True, capture_output=True)
        try:
            rows = []
            for name, snippet in SNIPPETS.items():
                t = {"old": [], "new": []}
                for r in range(args.rounds):
                    for side, src in (("old", old / "src"), ("new", ROOT / "src")):
                        work = Path(tmp) / f"{side}-{r}-{len(rows)}"
                        t[side].append(time_step(src, snippet, steps[name], work))
                best = {k: min(v) for k, v in t.items()}
                rows.append((name, best["old"] * 1e3, best["new"] * 1e3, best["new"] / best["old"]))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    print("| run | before the engine (ms/step) | engine (ms/step) | ratio new / old |")
    print("|---|---:|---:|---:|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {ratio:.2f} |")
    print(json.dumps({name: ratio for name, _, _, ratio in rows}))


if __name__ == "__main__":
    main()
