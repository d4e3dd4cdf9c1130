"""Sample quality at an equal training budget on digits: denoisekit vs diffusers vs lucidrains'
``denoising-diffusion-pytorch``.

Each library trains an unconditional model of about the same size on the same images (scikit-learn's
digits, the ``train`` split at the size of the denoisekit config, in [-1, 1], no flips) for the same
budget (``--minutes``, 5 by default, on ``--threads`` 2 threads), then draws ``--n-samples`` (1000)
images, which are scored alike (uint8, ``denoisekit.eval.report.evaluate(..., ref="digits")``: Frechet
distance, KID and precision/recall in the feature space of the digits classifier that denoisekit
trains and caches). Each library is used the way its own documentation teaches:

- ``denoisekit``: the config of ``make demo`` (``--config``, default ``configs/digits-demo.yaml``:
  EDM preconditioning, log-normal noise levels and EDM loss weighting, power-function EMA, cosine
  LR) made unconditional, trained by its ``Trainer`` and sampled with the config's sampler
  (DPM-Solver++(2M), Karras grid) and NFE;
- ``diffusers``: a ``UNet2DModel`` with the same block layout (base width chosen to match the
  parameter count) trained by the loop of diffusers' ``examples/unconditional_image_generation/
  train_unconditional.py`` with its defaults: ``DDPMScheduler`` (1000 steps, linear betas,
  epsilon), MSE, AdamW (lr 1e-4, betas (0.95, 0.999), weight decay 1e-6), cosine LR with warm-up,
  gradient clipping at 1, ``EMAModel`` (warm-up EMA, inv_gamma 1, power 3/4, max 0.9999); sampled
  with ``DDIMPipeline`` (its scheduler built from the training config, eta 0) at ``--peer-steps``
  (50) steps. The example's 1000-step ``DDPMPipeline`` is 20x slower than that on a CPU;
- ``lucidrains``: ``Unet`` + ``GaussianDiffusion`` with the package's defaults (sigmoid schedule,
  v-prediction), its ``Trainer``'s recipe (Adam lr 1e-4, EMA 0.995 every 10 steps), DDIM sampling
  at ``--peer-steps`` steps; run by ``benchmarks/peers/lucidrains_digits.py`` with the Python of a
  separate virtual environment (``make peers`` creates it; ``--peers-python``, default
  ``.venv-peers/bin/python``: the package
  needs torchvision, which must not replace the main environment's torch).

Differences a reader should know: all use the same batch (``--batch``, 128, the denoisekit config's);
the warm-up of a cosine schedule is capped at a tenth of the run (diffusers' 500 steps would
otherwise take most of a CPU run); the runs take turns, not interleaved, so machine load can differ
between them: each row notes its load average and the share of the two cores its process got.

Budget: the training loop stops when the budget is spent (``--clock wall``, the default, or ``cpu``:
process CPU time / threads, which does not count time spent waiting for a core on a shared
machine). The libraries whose learning-rate schedule needs the run's length (denoisekit's and
diffusers' cosine) first time a few steps on a throw-away model (not counted) to set the number of
steps that fits; a run also stops there if the machine got faster.

A run name may carry a learning-rate override for a peer (``diffusers:lr=1e-3``): peers are
documented with recipes for long GPU runs, and this shows how much of the gap is their learning rate.

    python benchmarks/quality.py                       # about 20 minutes; rewrites its RESULTS.md section
    python benchmarks/quality.py --minutes 0.3 --n-samples 200 --no-write      # smoke test

On a shared machine use ``--clock cpu``: the script then sets ``OMP_WAIT_POLICY=PASSIVE`` (before
torch loads, and for the peers' process) so that a thread waiting for a busy core sleeps instead of
spinning, and process CPU time measures work done rather than time spent waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
if "--clock" in sys.argv and "cpu" in sys.argv:  # before torch's OpenMP runtime starts (see the docstring)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import yaml
from torch import Tensor

from _common import diffusers_unet, write_section  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Quality at equal wall-clock"
PEER_SCRIPT = Path(__file__).with_name("peers") / "lucidrains_digits.py"


# ------------------------------------------------------------------------------------------ helpers


@dataclass
class Budget:
    """A training budget of ``seconds`` on the ``wall`` clock or on process CPU time / ``threads``."""

    seconds: float
    clock: str
    threads: int

    def now(self) -> float:
        return time.perf_counter() if self.clock == "wall" else time.process_time() / self.threads


class Meter:
    """Wall and process CPU seconds, and the load average, around a block."""

    def __enter__(self) -> "Meter":
        self.load_before = os.getloadavg()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0
        self.load_after = os.getloadavg()


def to_uint8(x: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def capped_warmup(warmup: int, steps: int) -> int:
    return max(1, min(warmup, steps // 10))


def steps_for_budget(seconds_per_step: float, budget: Budget) -> int:
    return max(10, int(budget.seconds / seconds_per_step))


def time_steps(step: Any, budget: Budget, n: int = 8, warmup: int = 2) -> float:
    """Seconds per call of ``step()`` on the budget's clock (after ``warmup`` calls)."""
    for _ in range(warmup):
        step()
    t0 = budget.now()
    for _ in range(n):
        step()
    return (budget.now() - t0) / n


class Stream:
    """An endless stream of shuffled epochs of ``images`` in batches of ``batch``."""

    def __init__(self, images: Tensor, batch: int, seed: int):
        self.images, self.batch = images, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(images), generator=self.gen), 0

    def __next__(self) -> Tensor:
        if self.pos + self.batch > len(self.order):
            self.order = torch.cat([self.order[self.pos:], torch.randperm(len(self.images), generator=self.gen)])
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.images[idx]


# ------------------------------------------------------------------------------------------ denoisekit


def denoisekit_config(path: Path, batch: int) -> Any:
    """The config at ``path`` made unconditional (no class embedding, no guidance), no sample grids."""
    from denoisekit.train.config import config_from_dict

    raw = yaml.safe_load(path.read_text())
    raw["model"].pop("num_classes", None)
    raw["condition"] = {"kind": "none"}
    raw["train"].update(batch_size=batch, save_every=0, keep_last=1, log_every=10**9)
    raw.setdefault("sample", {}).update(cfg_scale=1.0, n=0, every=0)
    return config_from_dict(raw)


def run_denoisekit(cfg: Any, budget: Budget, n_samples: int, seed: int, work: Path,
                   extra_nfe: list[int]) -> list[dict[str, Any]]:
    from denoisekit.generation import Guidance, generate
    from denoisekit.train.config import config_from_dict, config_to_dict
    from denoisekit.train.trainer import Trainer

    def with_steps(steps: int, warmup: int | None = None) -> Any:
        d = config_to_dict(cfg)
        d["train"]["steps"] = steps
        if warmup is not None:
            d["optim"]["warmup_steps"] = warmup
        return config_from_dict(d)

    probe = Trainer(with_steps(10**6), tempfile.mkdtemp(dir=work), progress=False)
    per_step = time_steps(probe.train_step, budget)
    del probe
    steps = steps_for_budget(per_step, budget)
    warmup = capped_warmup(cfg.optim.warmup_steps, steps)
    trainer = Trainer(with_steps(steps, warmup), work / "denoisekit-run", progress=False)
    with Meter() as m:
        start = budget.now()
        while trainer.step < steps and budget.now() - start < budget.seconds:
            loss = float(trainer.train_step()[0])
    model = trainer.recipe.loaded_model(trainer)  # the EMA network
    model.denoiser.eval().requires_grad_(False)
    s = cfg.sample
    rows = []
    for nfe in [s.nfe, *extra_nfe]:
        with torch.no_grad(), Meter() as ms:
            x = generate(model, n_samples, nfe=nfe, guidance=Guidance(), seed=seed, batch_size=n_samples)
        rows.append(dict(name="denoisekit" if nfe == s.nfe else f"denoisekit (NFE {nfe})",
                         library="denoisekit", torch=torch.__version__, params=n_params(trainer.raw_net),
                         steps=trainer.step, planned_steps=steps, images_seen=trainer.step * cfg.train.batch_size,
                         batch=cfg.train.batch_size, lr=cfg.optim.lr, warmup=warmup, train_wall=m.wall,
                         train_cpu=m.cpu, load_before=m.load_before, load_after=m.load_after, final_loss=loss,
                         sampler=f"{s.sampler}, {s.schedule} grid", nfe=nfe, sample_wall=ms.wall,
                         sample_cpu=ms.cpu, images=to_uint8(x)))
    return rows


# ------------------------------------------------------------------------------------------ diffusers


def diffusers_base(cfg: Any, size: int, target: int) -> int:
    """The base width (a multiple of the GroupNorm groups) whose parameter count is nearest ``target``."""
    g = cfg.model.options.get("norm_groups", 32)
    best = None
    for base in range(g, 257, g):
        n = n_params(diffusers_unet(cfg.model.options, size, base))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (base, n)
        if n > 2 * target:
            break
    return best[0]


def run_diffusers(cfg: Any, data: Tensor, budget: Budget, n_samples: int, seed: int, target_params: int,
                  batch: int, lr: float, peer_steps: int, name: str) -> dict[str, Any]:
    import diffusers
    import torch.nn.functional as F
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    size = data.shape[-1]
    base = diffusers_base(cfg, size, target_params)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")

    def setup(total: int) -> tuple[Any, ...]:
        torch.manual_seed(seed)
        model = diffusers_unet(cfg.model.options, size, base)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=capped_warmup(500, total),
                              num_training_steps=total)
        ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                       model_cls=UNet2DModel, model_config=model.config)
        return model, opt, sched, ema

    def make_step(model: Any, opt: Any, sched: Any, ema: Any, stream: Stream) -> Any:
        def step() -> float:
            clean = next(stream)
            noise = torch.randn(clean.shape)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],)).long()
            noisy = noise_scheduler.add_noise(clean, noise, t)
            loss = F.mse_loss(model(noisy, t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.step(model.parameters())
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())
        return step

    per_step = time_steps(make_step(*setup(10**6), Stream(data, batch, seed)), budget)
    steps = steps_for_budget(per_step, budget)
    model, opt, sched, ema = setup(steps)
    step = make_step(model, opt, sched, ema, Stream(data, batch, seed))
    model.train()
    done = 0
    with Meter() as m:
        start = budget.now()
        while done < steps and budget.now() - start < budget.seconds:
            loss = step()
            done += 1
    ema.copy_to(model.parameters())
    model.eval()
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad(), Meter() as ms:
        out = pipe(batch_size=n_samples, generator=torch.Generator().manual_seed(seed), num_inference_steps=peer_steps,
                   eta=0.0, output_type="np").images  # (N, H, W, 1) in [0, 1]
    images = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
    return dict(name=name, library=f"diffusers {diffusers.__version__}", torch=torch.__version__,
                params=n_params(model), base=base, steps=done, planned_steps=steps, images_seen=done * batch,
                batch=batch, lr=lr, warmup=capped_warmup(500, steps), train_wall=m.wall, train_cpu=m.cpu,
                load_before=m.load_before, load_after=m.load_after, final_loss=loss,
                sampler="DDIMPipeline (eta 0, leading spacing, clip_sample)", nfe=peer_steps, sample_wall=ms.wall,
                sample_cpu=ms.cpu, images=images)


# ------------------------------------------------------------------------------------------ lucidrains


def run_lucidrains(data: Tensor, budget: Budget, n_samples: int, seed: int, target_params: int, batch: int,
                   lr: float, peer_steps: int, python: str, work: Path, name: str) -> dict[str, Any]:
    data_path, out, result = work / "digits.npz", work / "lucidrains.npz", work / "lucidrains.json"
    np.savez(data_path, images=data.numpy())
    cmd = [python, str(PEER_SCRIPT), "--data", str(data_path), "--seconds", str(budget.seconds), "--clock",
           budget.clock, "--threads", str(budget.threads), "--batch", str(batch), "--lr", str(lr),
           "--target-params", str(target_params), "--sampling-steps", str(peer_steps), "--n-samples",
           str(n_samples), "--seed", str(seed), "--out", str(out), "--result", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": str(budget.threads), "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    row = json.loads(result.read_text())
    with np.load(out) as f:
        row["images"] = f["images"]
    return dict(name=name, **row)


# ------------------------------------------------------------------------------------------ report


def evaluate_row(row: dict[str, Any]) -> dict[str, Any]:
    from denoisekit.eval.report import evaluate

    metrics = evaluate(row["images"], ref="digits")
    keep = ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "class_coverage", "class_counts")
    return {k: metrics[k] for k in keep if k in metrics} | {"feature_network": metrics["feature_network"]}


def fmt_load(row: dict[str, Any]) -> str:
    return f"{row['load_before'][0]:.1f} / {row['load_after'][0]:.1f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [SECTION, "",
             f"`python benchmarks/quality.py --minutes {meta['minutes']:g}` ({meta['date']}; {meta['machine']}; "
             f"{meta['threads']} threads; budget on the {meta['clock']} clock; OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
             f"{meta['total_s']:.0f} s in all). "
             f"Unconditional models of about {meta['target_params'] / 1e6:.2f}M parameters trained for "
             f"{meta['minutes']:g} minutes each on the {meta['n_train']} digits of the train split at "
             f"{meta['size']}x{meta['size']} (batch {meta['batch']}), {meta['n_samples']} samples each, "
             f"scored against all 1797 digits in the feature space of {meta['feature_network']}. "
             f"denoisekit config: `{meta['config']}` made unconditional ({meta['dk_summary']}). Load = 1-minute load average before / "
             f"after training; core share = process CPU time / (wall time x threads).", "",
             "| run | params | steps (planned) | images seen | train wall s | train CPU s | core share | load | "
             "final loss | sampler | NFE | sampling s | FID | KID | precision | recall | density | coverage | "
             "classes covered |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        planned = f" ({r['planned_steps']})" if "planned_steps" in r else ""
        share = r["train_cpu"] / max(r["train_wall"] * meta["threads"], 1e-9)
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['steps']}{planned} | {r['images_seen']} | "
            f"{r['train_wall']:.0f} | {r['train_cpu']:.0f} | {share:.2f} | {fmt_load(r)} | {r['final_loss']:.4f} | "
            f"{r['sampler']} | {r['nfe']} | {r['sample_wall']:.1f} | {r['fid']:.3f} | {r['kid']:.4f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | "
            f"{r.get('class_coverage', float('nan')):.1f} |")
    if "real" in meta:
        r = meta["real"]
        lines.append(f"| real digits ({meta['n_samples']} of the train split) | | | | | | | | | | | | {r['fid']:.3f} | "
                     f"{r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | "
                     f"{r['coverage']:.3f} | {r.get('class_coverage', float('nan')):.1f} |")
    lines.append("")
    ours = next((r for r in rows if r["name"] == "denoisekit"), None)
    peers = [r for r in rows if r["library"] != "denoisekit"]
    if ours is not None and peers:
        best = min(peers, key=lambda r: r["fid"])
        ratio = ours["fid"] / best["fid"]
        lines.append(f"FID ratio denoisekit / best peer ({best['name']}): {ratio:.2f} "
                     f"(target from the issue: <= 0.5, {'met' if ratio <= 0.5 else 'missed'}).")
        lines.append("")
    lines += [f"Samples: `{meta['out']}/<run>.png` (first 100 of each). Versions: " +
              "; ".join(sorted({f"{r['library']} (torch {r['torch']})" for r in rows})) + ".", ""]
    lines += [f"- {note}" for note in meta.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def dk_summary(cfg: Any) -> str:
    o = cfg.model.options
    return (f"{cfg.model.name} {o.get('channels')} x {tuple(o.get('channel_mult', ()))}, {o.get('num_res_blocks')} "
            f"block(s) per level, attention at levels {tuple(o.get('attention_levels', ()))}; {cfg.process.name} "
            f"process, {cfg.process.prediction} prediction, {cfg.loss.noise_levels} noise levels; lr {cfg.optim.lr:g} "
            f"{cfg.optim.schedule}; EMA {cfg.ema.kind}")


def save_grid(images: np.ndarray, path: Path) -> None:
    from denoisekit.eval.plotting import save_grid as write_grid

    x = torch.from_numpy(images[:100]).permute(0, 3, 1, 2).float() / 127.5 - 1
    write_grid(x, path, columns=10)


def parse_run(spec: str) -> tuple[str, float | None]:
    name, _, opt = spec.partition(":")
    if name not in ("denoisekit", "diffusers", "lucidrains"):
        raise SystemExit(f"unknown run {spec!r}: expected denoisekit, diffusers or lucidrains[:lr=X]")
    if not opt:
        return name, None
    key, _, value = opt.partition("=")
    if key != "lr" or name == "denoisekit":
        raise SystemExit(f"run {spec!r}: only peers take an option, lr=X")
    return name, float(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per library")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=None, help="denoisekit config (default configs/digits-demo.yaml, else digits-unet)")
    ap.add_argument("--size", type=int, default=0, help="image size (default: the config's)")
    ap.add_argument("--runs", default="denoisekit,diffusers,lucidrains",
                    help="comma-separated: denoisekit, diffusers, lucidrains, and peers with a learning rate: diffusers:lr=1e-3")
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--peer-steps", type=int, default=50, help="DDIM steps of the peers' samplers")
    ap.add_argument("--extra-nfe", default="", help="also sample denoisekit's model at these NFE (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-quality"))
    ap.add_argument("--no-write", action="store_true", help="print the markdown only")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: tabulate the runs' JSON files already in --out (in --runs order)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from denoisekit.data.digits import DigitsDataset

    t_all = time.perf_counter()
    config = Path(args.config) if args.config else next(
        p for p in (ROOT / "configs" / "digits-demo.yaml", ROOT / "configs" / "digits-unet.yaml") if p.exists())
    raw_batch = yaml.safe_load(config.read_text())["train"].get("batch_size", 128)
    cfg = denoisekit_config(config, raw_batch)
    if args.size:
        from denoisekit.train.config import config_from_dict, config_to_dict
        d = config_to_dict(cfg)
        d["data"]["size"] = args.size
        cfg = config_from_dict(d)
    size = cfg.data.options.get("size", 8)
    data = DigitsDataset(size=size, split="train").images  # the trainer's data, for the peers
    from denoisekit.train.build import build_model
    target = n_params(build_model(cfg))
    budget = Budget(args.minutes * 60, args.clock, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [int(v) for v in args.extra_nfe.split(",") if v.strip()]

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    specs = [s.strip() for s in args.runs.split(",") if s.strip()]
    if args.report_only:
        saved = {r["name"]: r for r in (json.loads(p.read_text()) for p in sorted(out.glob("*.json")))}
        order = [n for spec in specs for n in saved if n == spec or (spec == "denoisekit" and n.startswith("denoisekit"))]
        rows = [saved[n] for n in dict.fromkeys(order)]
        specs = []
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        for spec in specs:
            lib, lr = parse_run(spec)
            print(f"[{time.strftime('%H:%M:%S')}] {spec}: training {args.minutes:g} min "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
            try:
                if lib == "denoisekit":
                    new = run_denoisekit(cfg, budget, args.n_samples, args.seed, work, extra)
                elif lib == "diffusers":
                    new = [run_diffusers(cfg, data, budget, args.n_samples, args.seed, target, cfg.train.batch_size,
                                         lr or 1e-4, args.peer_steps, spec)]
                else:
                    new = [run_lucidrains(data, budget, args.n_samples, args.seed, target, cfg.train.batch_size,
                                          lr or 1e-4, args.peer_steps, args.peers_python, work, spec)]
            except Exception as e:  # a peer that cannot run is reported, the others go on
                print(f"{spec} failed: {e}", file=sys.stderr)
                notes.append(f"{spec} did not run: {str(e).strip().splitlines()[-1]}")
                continue
            for row in new:
                row.update(evaluate_row(row))
                tag = re.sub(r"[^A-Za-z0-9.=-]+", "_", row["name"]).strip("_")
                save_grid(row["images"], out / f"{tag}.png")
                np.savez_compressed(out / f"{tag}.npz", images=row["images"])
                row.pop("images")
                (out / f"{tag}.json").write_text(json.dumps(row, indent=1))
                print(f"  {row['name']}: {row['steps']} steps in {row['train_wall']:.0f} s wall "
                      f"({row['train_cpu']:.0f} s CPU), FID {row['fid']:.3f}, KID {row['kid']:.4f}, "
                      f"P {row['precision']:.3f} R {row['recall']:.3f}", flush=True)
                rows.append(row)

    g = torch.Generator().manual_seed(args.seed)
    real = data[torch.randperm(len(data), generator=g)[:min(args.n_samples, len(data))]]
    real_metrics = evaluate_row({"images": to_uint8(real)})
    meta = dict(minutes=args.minutes, clock=args.clock, threads=args.threads, date=time.strftime("%Y-%m-%d"),
                machine=f"torch {torch.__version__}, {platform.machine()} CPU, load average at start "
                        f"{rows[0]['load_before'][0]:.1f}" if rows else platform.machine(),
                total_s=sum(r["train_wall"] + r["sample_wall"] for r in rows) if args.report_only
                else time.perf_counter() - t_all, target_params=target, n_train=len(data), size=size,
                batch=cfg.train.batch_size, n_samples=args.n_samples, config=os.path.relpath(config.resolve(), ROOT),
                dk_summary=dk_summary(cfg), feature_network=real_metrics["feature_network"], real=real_metrics,
                out=os.path.relpath(out, ROOT), notes=notes)
    text = markdown(rows, meta)
    print(text)
    if not args.no_write:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
