"""First-stage quality: the KL autoencoders of latent diffusion at downsampling factors 4 and 8.

Trains the presets ``configs/autoencoder/shapes-f4.yaml`` and ``shapes-f8.yaml`` (32x32 shapes; skipped when the
run is already in ``--runs``) and reports what each run's own evaluation wrote to ``metrics.json``: held-out PSNR
(beside the trivial reconstruction by the mean image), rFID and rKID of the reconstructions against the
originals in the shapes classifier's feature space, and the rFID floor (other real renders against the same
originals, same n). Also listed when present: the 64x64 first stages of ``benchmarks/latent.py``
(``runs/latent-bench/ae-f4``) and of the emoji text-to-image model (``runs/emoji-ae-f4``).

    python benchmarks/autoencoders.py            # about 25 minutes on one core if nothing is trained yet
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from _common import write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Autoencoders"
PRESETS = ("shapes-f4", "shapes-f8")
EXTRA = {"shapes64-f4 (latent.py)": ROOT / "runs" / "latent-bench" / "ae-f4", "emoji-f4": ROOT / "runs" / "emoji-ae-f4"}


def row(name: str, run: Path) -> str:
    from denoisekit.train.autoencoder import load_autoencoder_config

    m = json.loads((run / "metrics.json").read_text())
    cfg = load_autoencoder_config(run / "config.yaml")
    size, c = cfg.data.options.get("size"), cfg.model.in_channels
    latent = "x".join(map(str, m["latent_shape"]))
    ratio = c * size * size / (m["latent_shape"][0] * m["latent_shape"][1] * m["latent_shape"][2])
    fid = (f"{m['rfid']:.2f} | {m['rkid']:.4f} | {m['rfid_floor']:.2f}" if "rfid" in m else "| |")
    return (f"| {name} | {size}x{size} | {latent} ({ratio:.0f}x fewer numbers) | {m['parameters'] / 1e6:.2f}M | {m['step']} | "
            f"{m['train_time_s'] / 60:.1f} | {m['psnr']:.1f} ({m['psnr_mean_image']:.1f}) | {fid} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "autoencoders"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from denoisekit.train.autoencoder import train_autoencoder

    lines = [SECTION, "", f"`python benchmarks/autoencoders.py` ({time.strftime('%Y-%m-%d')}; torch {torch.__version__}, "
             f"{platform.machine()} CPU). Held-out images: 1000 renders the training never drew (emoji: its test split, "
             "no rFID: there is no built-in emoji feature network). rFID / rKID: reconstructions vs originals in "
             "the shapes classifier's feature space; floor: other real renders vs the same originals. Train min: wall "
             "time of the run, one thread, on a machine shared with other runs (a noisy clock).", "",
             "| autoencoder | images | latents | parameters | steps | train min | PSNR dB (mean image) | rFID | rKID | "
             "rFID floor |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in PRESETS:
        run = Path(args.runs) / name
        if not (run / "metrics.json").is_file():
            train_autoencoder(ROOT / "configs" / "autoencoder" / f"{name}.yaml", run, progress=False)
        lines.append(row(name, run))
    lines += [row(name, run) for name, run in EXTRA.items() if (run / "metrics.json").is_file()]
    text = "\n".join(lines + [""])
    print(text)
    if not args.no_write:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
