"""The generative-model zoo at an equal training budget: VAE, DCGAN, pixel diffusion, latent diffusion.

The comparison the field's lectures draw (quality, diversity, speed), measured alike on two datasets:

- digits: scikit-learn's 8x8 digits (the train split); metrics against all 1797 digits in the feature space of
  denoisekit's digits classifier. Latent diffusion uses the f=2 autoencoder ``configs/autoencoder/digits-f2.yaml``
  (trained first, its cost reported apart);
- shapes: 64x64 renders of 1-3 coloured shapes; metrics against held-out renders in the feature space of the
  shapes attribute network. The two diffusion rows are ``benchmarks/latent.py``'s runs (trained by it if
  missing, with the same budget).

Models: a VAE sampled from its prior (``denoisekit.models.vae``, decoder mean), a DCGAN with the non-saturating
loss (``denoisekit.models.gan``), pixel diffusion (``configs/digits-demo.yaml`` / ``configs/shapes64-pixel.yaml``)
and latent diffusion (``configs/digits-latent.yaml`` / ``configs/shapes64-latent.yaml``), all unconditional. Each
trains for the same ``--minutes`` (digits) / ``--shapes-minutes`` of process CPU time per model, its number of
steps set from a timed probe of its own step. Metrics of ``--n`` samples: FID, precision and recall (k-NN
manifolds, Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020), and sampling images/s (diffusion:
DPM-Solver++(2M), Karras grid, ``--nfe``; the latent rows include decoding). Writes its RESULTS.md section and
``benchmarks/zoo.png`` (16 samples per model, side by side).

    python benchmarks/zoo.py --threads 1                # reuses trained runs under runs/zoo and runs/latent-bench
    python benchmarks/zoo.py --only digits --threads 1  # one dataset (the table keeps the other's saved rows)
    python benchmarks/zoo.py --quick --no-write         # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import latent
from _common import RunSampler, train_diffusion, write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Generative-model zoo"
FIGURE = Path(__file__).with_name("zoo.png")
MODELS = ("VAE", "DCGAN", "pixel diffusion", "latent diffusion")


def train_baseline(model: str, data: str, options: dict[str, Any], seconds: float, out: Path, batch: int) -> Any:
    """A VAE or DCGAN trained for ``seconds`` of CPU time (steps from a timed probe), or the run already in ``out``."""
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.train.zoo import ZooConfig, load_images, load_zoo
    from denoisekit.train.recipes.zoo import train_zoo

    meta = out / "budget.json"
    if (latest_checkpoint(out / "checkpoints") or latest_checkpoint(out)) is not None and meta.is_file():
        return load_zoo(out), json.loads(meta.read_text())
    images = load_images(data, options)
    probe_cfg = ZooConfig(model=model.lower(), data=data, data_options=options, batch=batch, steps=1)

    def cpu(steps: int) -> float:
        t0 = time.process_time()
        train_zoo(dataclasses.replace(probe_cfg, steps=steps), images)
        return time.process_time() - t0

    per_step = max(cpu(12) - cpu(2), 1e-6) / 10 / torch.get_num_threads()  # the difference cancels the set-up
    steps = max(20, int(seconds / per_step))
    cfg = dataclasses.replace(probe_cfg, steps=steps, out=str(out), log_every=min(50, steps))
    t0 = time.process_time()
    run = train_zoo(cfg, images, resume=False)
    info = {"steps": steps, "batch": batch, "train_cpu_s": (time.process_time() - t0) / torch.get_num_threads()}
    meta.write_text(json.dumps(info, indent=1) + "\n")
    return run.model, info


def baseline_rate(model: torch.nn.Module, n: int) -> float:
    from denoisekit.train.zoo import samples_per_second

    return samples_per_second(model, n=n, batch_size=n)


def evaluate_rows(name: str, arms: dict[str, tuple[torch.Tensor, float, dict[str, Any]]], ref: Any,
                  features: Any) -> list[dict[str, Any]]:
    from denoisekit.eval.report import evaluate

    rows = []
    for model, (x, rate, info) in arms.items():
        r = evaluate(x, ref, features=features, kid_subset_size=min(1000, len(x)))
        rows.append({"dataset": name, "model": model, "steps": info["steps"], "batch": info["batch"], "sample_ips": rate,
                     "train_cpu_s": info.get("train_cpu_s") or float("nan"),
                     **{k: r[k] for k in ("fid", "precision", "recall", "density", "coverage")}})
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    return rows


def digits_rows(args: argparse.Namespace, runs: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict]:
    from denoisekit.train.config import load_config
    from denoisekit.eval.features import digits_feature_network
    from denoisekit.train.autoencoder import train_autoencoder
    from denoisekit.train.zoo import sample

    seconds, options = args.minutes * 60, {"size": 8, "split": "train"}
    ae_dir = runs / "digits-ae-f2"
    if not (ae_dir / "metrics.json").is_file():
        train_autoencoder(ROOT / "configs" / "autoencoder" / "digits-f2.yaml", ae_dir, progress=False,
                          overrides=["train.steps=100"] if args.quick else [])
    ae = json.loads((ae_dir / "metrics.json").read_text())
    arms: dict[str, tuple[torch.Tensor, float, dict[str, Any]]] = {}
    for model in ("VAE", "DCGAN"):
        net, info = train_baseline(model, "digits", options, seconds, runs / "digits" / model.lower(), 64)
        arms[model] = (sample(net, args.n, seed=0), baseline_rate(net, 256), info)
    uncond = ["condition.kind=none", "model.num_classes=null", "sample.n=0", "sample.cfg_scale=1.0"]
    for model, preset, extra in (("pixel diffusion", "digits-demo", []),
                                 ("latent diffusion", "digits-latent", [f"latent.autoencoder={ae_dir}"])):
        run = runs / "digits" / model.split()[0]
        info = train_diffusion(load_config(ROOT / "configs" / f"{preset}.yaml", uncond + extra), run, seconds)
        draw = RunSampler(run)
        arms[model] = (draw(args.n, nfe=args.nfe), draw.rate(256, nfe=args.nfe, rounds=3), info)
    from denoisekit.data.digits import DigitsDataset

    every = DigitsDataset(size=8, split="all").images  # reference and floor: disjoint random halves' first n
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))
    n = min(args.n, len(every) // 2)
    ref, arms["real digits (floor)"] = every[order[:n]], (every[order[n:2 * n]], float("nan"), {"steps": "", "batch": ""})
    return evaluate_rows("digits", arms, ref, digits_feature_network()), \
        {m: a[0][:16] for m, a in arms.items()}, {"ae": ae}


def shapes_rows(args: argparse.Namespace, runs: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict]:
    from denoisekit.data.transforms import uint8_to_tensor
    from denoisekit.eval.alignment import shapes_attribute_network
    from denoisekit.train.zoo import sample

    seconds = args.shapes_minutes * 60
    bench = Path(args.latent_runs)
    options = {"size": latent.SIZE, "length": 2000 if args.quick else 20000, "label_from": "none", "return_masks": False}
    arms: dict[str, tuple[torch.Tensor, float, dict[str, Any]]] = {}
    for model in ("VAE", "DCGAN"):
        net, info = train_baseline(model, "shapes", options, seconds, runs / "shapes64" / model.lower(), 64)
        arms[model] = (sample(net, args.n, seed=0), baseline_rate(net, 64), info)
    ae = latent.autoencoder(bench, 30 if args.quick else None)
    for arm in latent.ARMS:
        info = train_diffusion(latent.arm_config(arm, bench, args.quick), bench / arm, seconds)
        x = torch.stack([uint8_to_tensor(im) for im in latent.samples(arm, bench, args.n, args.nfe)])
        arms[f"{arm} diffusion"] = (x, RunSampler(bench / arm).rate(16, nfe=args.nfe, rounds=3), info)
    arms["real renders (floor)"] = (latent.held_out(args.n, latent.REAL_SEED), float("nan"), {"steps": "", "batch": ""})
    rows = evaluate_rows("shapes 64x64", arms, latent.held_out(args.n), shapes_attribute_network(latent.SIZE))
    return rows, {m: a[0][:16] for m, a in arms.items()}, {"ae": ae}


def figure(grids: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from denoisekit.data.transforms import tensor_to_uint8

    names = list(grids)
    fig, axes = plt.subplots(len(names), len(MODELS), figsize=(3 * len(MODELS), 3.1 * len(names)), squeeze=False)
    for i, ds in enumerate(names):
        for j, model in enumerate(MODELS):
            ax = axes[i][j]
            ax.axis("off")
            if model not in grids[ds]:
                continue
            x = tensor_to_uint8(grids[ds][model])  # (16, H, W, C)
            h, w, c = x.shape[1:]
            tile = x.reshape(4, 4, h, w, c).transpose(0, 2, 1, 3, 4).reshape(4 * h, 4 * w, c)
            ax.imshow(tile.squeeze(-1) if c == 1 else tile, cmap="gray" if c == 1 else None, interpolation="nearest")
            ax.set_title(f"{ds}: {model}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [SECTION, "", f"`python benchmarks/zoo.py` ({meta['date']}; {meta['machine']}). Every model trains for the "
             f"same CPU budget per dataset (digits {meta['minutes']:g} min, shapes {meta['shapes_minutes']:g} min; steps from a "
             "timed probe, the CPU time each actually used is listed), "
             f"unconditional; {meta['n']} samples each; diffusion samples with DPM-Solver++(2M) at {meta['nfe']} NFE. "
             "FID / precision / recall / density / coverage in the dataset's own classifier feature space "
             "(digits: a random n of the 1797 digits, the floor row another n; shapes: held-out renders, the floor row other renders). Sampling img/s on "
             f"{meta['threads']} thread(s), latent rows including decoding. Samples side by side: `benchmarks/zoo.png`.",
             "", "| dataset | model | training steps (batch) | training CPU min | FID | precision | recall | density | coverage "
             "| sampling img/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        steps = f"{r['steps']} ({r['batch']})" if r["steps"] != "" else ""
        ips = f"{r['sample_ips']:.1f}" if r["sample_ips"] == r["sample_ips"] else ""
        cpu = f"{r['train_cpu_s'] / 60:.1f}" if r["train_cpu_s"] == r["train_cpu_s"] else ""
        lines.append(f"| {r['dataset']} | {r['model']} | {steps} | {cpu} | {r['fid']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | {ips} |")
    lines.append("")
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        models = [r for r in rows if r["dataset"] == ds and r["steps"] != ""]
        best = min(models, key=lambda r: r["fid"])
        fastest = max(models, key=lambda r: r["sample_ips"])
        lines.append(f"- {ds}: lowest FID {best['fid']:.2f} ({best['model']}, {best['steps']} steps); fastest sampler "
                     f"{fastest['model']} ({fastest['sample_ips']:.0f} img/s, one network pass per image, against "
                     f"{meta['nfe']} for diffusion).")
    lines.append("- Equal CPU time is not equal steps: a model whose step is expensive at this size gets few of them "
                 "(see the steps column). The VAE's and DCGAN's steps come from a timed probe of their step, which "
                 "can overestimate it (then they used less CPU than the budget: see the CPU column).")
    notes = meta.get("notes", {})
    if "digits" in notes:
        a = notes["digits"]["ae"]
        lines += ["", f"Digits' first stage (f=2, 2x4x4 latents): {a['step']} steps, {a['train_time_s']:.0f} s, held-out "
                  f"PSNR {a['psnr']:.1f} dB, rFID {a['rfid']:.2f} (floor {a['rfid_floor']:.2f})."]
    if "shapes" in notes:
        a = notes["shapes"]["ae"]
        lines += ["", f"Shapes' first stage (f=4, 4x16x16 latents): {a['step']} steps, {a['train_time_s'] / 60:.1f} min, held-out "
                  f"PSNR {a['psnr']:.1f} dB, rFID {a['rfid']:.2f} (floor {a['rfid_floor']:.2f})."]
    return "\n".join(lines + [""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "zoo"))
    ap.add_argument("--latent-runs", default=str(ROOT / "runs" / "latent-bench"), help="benchmarks/latent.py's runs")
    ap.add_argument("--minutes", type=float, default=3.0, help="digits: training budget per model (CPU time)")
    ap.add_argument("--shapes-minutes", type=float, default=12.0, help="shapes: training budget per model (CPU time)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--only", choices=("digits", "shapes"), default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.minutes = args.shapes_minutes = 0.2
        args.n, args.nfe, args.runs, args.latent_runs = 64, 8, str(ROOT / "runs" / "zoo-quick"), str(ROOT / "runs" / "latent-quick")
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    saved = runs / "results.json"
    old = json.loads(saved.read_text()) if saved.is_file() else {"rows": [], "notes": {}}
    rows, notes, grids = [], dict(old["notes"]), {}
    for name, fn in (("digits", digits_rows), ("shapes", shapes_rows)):
        if args.only in (None, name):
            new, grids[name], notes[name] = fn(args, runs)
            rows += new
            torch.save(grids[name], runs / f"{name}-grid.pt")
        else:
            rows += [r for r in old["rows"] if r["dataset"].startswith(name)]
            if (runs / f"{name}-grid.pt").is_file():
                grids[name] = torch.load(runs / f"{name}-grid.pt")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"torch {torch.__version__}, {platform.machine()} CPU",
            "threads": args.threads, "minutes": args.minutes, "shapes_minutes": args.shapes_minutes, "n": args.n,
            "nfe": args.nfe, "notes": notes}
    saved.write_text(json.dumps({"rows": rows, "notes": notes}, indent=1) + "\n")
    figure(grids, runs / "zoo.png" if args.no_write else FIGURE)
    text = markdown(rows, meta)
    print(text)
    if not args.no_write:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
