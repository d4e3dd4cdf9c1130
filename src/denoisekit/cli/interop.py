"""``denoisekit import-diffusers``, ``export-diffusers`` and ``card``: diffusers folders in and out, model cards.

    denoisekit import-diffusers path/to/diffusers-model --out runs/imported     # then: denoisekit sample runs/imported
    denoisekit export-diffusers runs/digits --out exported/digits              # UNet2DModel.from_pretrained(".../unet")
    denoisekit card runs/digits                                                 # (re)write runs/digits/README.md

See :mod:`denoisekit.compat.diffusers_io` for what maps; an option that does not is one line naming it (exit 2).
"""

from __future__ import annotations

import argparse

from .common import UsageError, positive_int


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a diffusers model folder: unet/config.json + diffusion_pytorch_model.safetensors "
                                  "(or at the root) and scheduler/scheduler_config.json")
    p.add_argument("--out", required=True, help="the run directory to write (must not exist)")
    p.add_argument("--size", type=positive_int, default=None, help="image size when config.json has no sample_size")


def _run_import(args: argparse.Namespace) -> int:
    from ..compat.diffusers_io import import_diffusers

    out = import_diffusers(args.folder, args.out, size=args.size)
    print(f"wrote {out} (sample it: denoisekit sample {out} --out samples.png)")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by 'denoisekit train' (a U-Net on the ddpm process)")
    p.add_argument("--out", required=True, help="the diffusers folder to write (must not exist)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="which weights (default ema)")


def _run_export(args: argparse.Namespace) -> int:
    from ..compat.diffusers_io import export_diffusers

    out = export_diffusers(args.run, args.out, weights=args.weights)
    print(f"wrote {out} (diffusers: UNet2DModel.from_pretrained('{out}/unet'), DDPMPipeline.from_pretrained('{out}'))")
    return 0


def _add_card(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory")


def _run_card(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..train.model_card import write_model_card

    if not (Path(args.run) / "config.yaml").is_file():
        raise UsageError(f"{args.run}: not a run directory (no config.yaml)")
    print(f"wrote {write_model_card(args.run)}")
    return 0


COMMANDS = {
    "import-diffusers": ("make a run of a local diffusers model folder (UNet2DModel / UNet2DConditionModel)",
                         _add_import, _run_import),
    "export-diffusers": ("write a run's U-Net as a diffusers folder (UNet2DModel + DDPMScheduler)",
                         _add_export, _run_export),
    "card": ("(re)write a run's model card, README.md", _add_card, _run_card),
}
