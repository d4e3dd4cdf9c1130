"""Pixel vs latent diffusion on 64x64 shapes at an equal training budget (Rombach et al. 2022's argument).

Two unconditional models with the same U-Net (LDM's comparison, Rombach et al. 2022 Fig. 6: one denoiser, two
spaces) learn 64x64 renders of 1-3 coloured shapes:

- pixel: ``configs/shapes64-pixel.yaml``, the U-Net on 3 x 64 x 64 images;
- latent: ``configs/shapes64-latent.yaml``, the same U-Net (but for its input channels) on the 4 x 16 x 16 latents of
  the f=4 KL autoencoder ``configs/autoencoder/shapes64-f4.yaml`` (trained first; its cost, and the one-off
  encoding of the training images, are reported beside the table: an autoencoder is trained once and reused).

Each diffusion model trains for ``--minutes`` of process CPU time (``--threads`` threads): the number of steps
comes from a timed probe of its own step. Measured: training images/s (CPU), sampling images/s (the same
sampler, DPM-Solver++(2M) on a Karras grid at ``--nfe``, the latent arm including decoding; the two arms
alternate, best of three), and FID, precision, recall, density and coverage of ``--n`` samples against
``--n`` held-out renders (a seed training never uses) in the feature space of denoisekit's shapes attribute
network, beside the real-vs-real floor at the same ``n``. Runs and samples go to ``--runs``, the figure to
``benchmarks/latent.png``; a trained run or saved samples are reused, so ``--only pixel`` and ``--only latent``
can train in parallel (one core each) before a final run without ``--only`` measures and writes the table.

    python benchmarks/latent.py --only pixel --threads 1 & python benchmarks/latent.py --only latent --threads 1
    python benchmarks/latent.py --threads 1             # measures; rewrites its RESULTS.md section
    python benchmarks/latent.py --quick --no-write      # smoke test (a minute)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import RunSampler, cpu_seconds_per_call, generate, shapes_renders, train_diffusion, write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Latent vs pixel diffusion"
SIZE = 64
HELD_OUT_SEED = 64_064
REAL_SEED = 64_065
ARMS = ("pixel", "latent")


def held_out(n: int, seed: int = HELD_OUT_SEED) -> torch.Tensor:
    """``n`` renders ``(n, 3, 64, 64)`` in [-1, 1] of the training distribution (1-3 shapes) from ``seed``."""
    return shapes_renders(n, seed, SIZE, 3)


def metrics(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    from denoisekit.eval.alignment import shapes_attribute_network
    from denoisekit.eval.report import evaluate

    r = evaluate(x, ref, features=shapes_attribute_network(SIZE), kid_subset_size=min(1000, len(x)))
    return {k: r[k] for k in ("fid", "kid", "precision", "recall", "density", "coverage")}


def autoencoder(runs: Path, steps: int | None) -> dict[str, Any]:
    """Train the first stage if missing; its held-out PSNR / rFID and training CPU time (``metrics.json``)."""
    from denoisekit.train.autoencoder import train_autoencoder

    out = runs / "ae-f4"
    if not (out / "metrics.json").is_file():
        t0 = time.process_time()
        train_autoencoder(ROOT / "configs" / "autoencoder" / "shapes64-f4.yaml", out, progress=False,
                          overrides=[f"train.steps={steps}", "eval.held_out=200"] if steps else [])
        print(f"autoencoder: {(time.process_time() - t0) / torch.get_num_threads():.0f} s CPU", flush=True)
    return json.loads((out / "metrics.json").read_text())


def arm_config(arm: str, runs: Path, quick: bool) -> Any:
    from denoisekit.train.config import load_config

    overrides = ["sample.n=0"] + ([f"latent.autoencoder={runs / 'ae-f4'}"] if arm == "latent" else [])
    overrides += ["data.length=2000", "model.channels=32"] if quick else []
    return load_config(ROOT / "configs" / f"shapes64-{arm}.yaml", overrides)


def encode_seconds(runs: Path, n: int = 256) -> float:
    """CPU seconds per image of encoding with the autoencoder (what caching the training latents costs)."""
    from denoisekit.train.autoencoder import load_autoencoder

    ae = load_autoencoder(runs / "ae-f4").eval()
    x = held_out(64, seed=REAL_SEED + 1)
    with torch.no_grad():
        return cpu_seconds_per_call(lambda: ae.encode(x).mode(), n=max(1, n // 64), warmup=1) / len(x)


def samples(arm: str, runs: Path, n: int, nfe: int) -> np.ndarray:
    """The arm's ``n`` samples as uint8 ``(n, 64, 64, 3)``, drawn once and kept in ``samples-n{n}-nfe{nfe}.npz``."""
    from denoisekit.data.transforms import tensor_to_uint8

    path = runs / arm / f"samples-n{n}-nfe{nfe}.npz"
    if not path.is_file():
        x = generate(runs / arm, n, nfe=nfe)
        np.savez_compressed(path, images=tensor_to_uint8(x))
    with np.load(path) as f:
        return f["images"]


def sampling_rates(runs: Path, nfe: int, batch: int, rounds: int = 3) -> dict[str, float]:
    """Images/s of each arm's sampling (decoding included, loading not), the arms alternating; best of ``rounds``."""
    samplers = {arm: RunSampler(runs / arm) for arm in ARMS}
    best = {arm: 0.0 for arm in ARMS}
    for _ in range(rounds):
        for arm in ARMS:
            best[arm] = max(best[arm], samplers[arm].rate(batch, nfe=nfe))
    return best


def n_params(run: Path) -> int:
    from denoisekit.train.run import load_run

    return sum(p.numel() for p in load_run(run)[0].parameters())


def markdown(rows: dict[str, dict[str, Any]], ae: dict[str, Any], meta: dict[str, Any]) -> str:
    p, lat = rows["pixel"], rows["latent"]
    lines = [SECTION, "", f"`python benchmarks/latent.py --minutes {meta['minutes']:g}` ({meta['date']}; {meta['machine']}). "
             f"Unconditional 64x64 shapes (1-3 shapes), {meta['minutes']:g} min of CPU time of diffusion training "
             f"per arm, {meta['n']} samples, DPM-Solver++(2M) at {meta['nfe']} NFE (Karras grid); metrics against "
             f"{meta['n']} held-out renders in the shapes attribute network's feature space.", "",
             "| model | parameters | training steps (batch) | training img/s | sampling img/s | FID | precision | "
             "recall | density | coverage |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, r in rows.items():
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['steps']} ({r['batch']}) | {r['train_ips']:.1f} | "
                     f"{r['sample_ips']:.2f} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['density']:.3f} | {r['coverage']:.3f} |")
    f = meta["floor"]
    lines.append(f"| real renders vs held-out (floor) | | | | | {f['fid']:.2f} | {f['precision']:.3f} | {f['recall']:.3f} | "
                 f"{f['density']:.3f} | {f['coverage']:.3f} |")
    ratio = lat["sample_ips"] / p["sample_ips"]
    verdict = "met" if ratio >= 3 and lat["fid"] <= p["fid"] else "not met"
    lines += ["", f"Latent sampling is **{ratio:.1f}x** faster per image (decoding included) and trains "
              f"{lat['train_ips'] / p['train_ips']:.1f}x more images/s; FID {lat['fid']:.2f} vs {p['fid']:.2f} at "
              f"the same training budget. Target (>= 3x faster per sample at equal or better FID): **{verdict}**. "
              f"The speed ratio does not depend on the budget; the FID gap does: {p['steps']} steps leave the pixel "
              f"model far from converged, and a longer budget would narrow the gap (not measured here).", "",
              f"The first stage, paid once: the f=4 autoencoder trained {ae['step']} steps in {ae['train_time_s'] / 60:.1f} "
              f"min of wall time, on one thread of a machine shared with other runs ({ae.get('parameters', 0) / 1e6:.2f}M parameters; held-out PSNR {ae['psnr']:.1f} dB, rFID "
              f"{ae['rfid']:.2f} against a floor of {ae['rfid_floor']:.2f}), and encoding the "
              f"{meta['n_train']} training images took {meta['encode_s']:.0f} s of CPU. Neither is in the diffusion budget: "
              f"an autoencoder is trained once and serves every latent model of its data. The latent model's FID cannot go below what the autoencoder's reconstructions allow (its rFID). "
              f"Samples: `{meta['figure']}` (top: pixel, bottom: latent).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "latent-bench"))
    ap.add_argument("--minutes", type=float, default=12.0, help="diffusion training budget per arm (CPU time)")
    ap.add_argument("--n", type=int, default=500, help="samples per arm and held-out renders")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--only", choices=ARMS + ("autoencoder",), default=None, help="only train this arm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ae_steps = None
    if args.quick:
        args.minutes, args.n, args.nfe, args.runs, ae_steps = 0.3, 64, 8, str(ROOT / "runs" / "latent-quick"), 30
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if args.only != "pixel":
        ae = autoencoder(runs, ae_steps)
    budget = {}
    for arm in ARMS if args.only in (None, "autoencoder") else (args.only,):
        if args.only == "autoencoder":
            break
        budget[arm] = train_diffusion(arm_config(arm, runs, args.quick), runs / arm, args.minutes * 60)
        print(f"{arm}: {budget[arm]['steps']} steps", flush=True)
    if args.only is not None:
        return
    ref, real = held_out(args.n), held_out(args.n, REAL_SEED)
    rows: dict[str, dict[str, Any]] = {}
    rates = sampling_rates(runs, args.nfe, batch=min(16, args.n))
    for arm in ARMS:
        x = samples(arm, runs, args.n, args.nfe)
        b = budget[arm]
        rows[arm] = {"label": f"{arm} diffusion" + (" (4x16x16 latents)" if arm == "latent" else " (3x64x64)"),
                     "params": n_params(runs / arm), "steps": b["steps"], "batch": b["batch"],
                     "train_ips": b["batch"] / b["seconds_per_step"], "sample_ips": rates[arm], **metrics(torch.as_tensor(x), ref)}
        print(arm, {k: v for k, v in rows[arm].items() if k != "label"}, flush=True)
    from denoisekit.data.transforms import uint8_to_tensor
    from denoisekit.eval.plotting import save_grid

    figure = runs / "pixel_vs_latent.png" if args.quick or args.no_write else Path(__file__).with_name("latent.png")
    grid = [torch.stack([uint8_to_tensor(im) for im in samples(arm, runs, args.n, args.nfe)[:16]]) for arm in ARMS]
    save_grid(torch.cat(grid), figure, columns=16)
    cfg = arm_config("latent", runs, args.quick)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"torch {torch.__version__}, {platform.machine()} CPU, "
            f"{args.threads} thread(s)", "n": args.n, "nfe": args.nfe, "minutes": args.minutes,
            "floor": metrics(real, ref), "n_train": cfg.data.options.get("length", 0),
            "encode_s": encode_seconds(runs) * cfg.data.options.get("length", 0),
            "figure": str(figure.relative_to(ROOT)) if figure.is_relative_to(ROOT) else str(figure)}
    text = markdown(rows, ae, meta)
    print(text)
    (runs / "results.json").write_text(json.dumps({"rows": rows, "autoencoder": ae, "meta": meta}, indent=1) + "\n")
    if not args.no_write:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
