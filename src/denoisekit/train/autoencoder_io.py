"""The files of a trained autoencoder: ``autoencoder.safetensors`` (weights with the latent scale and shift) and
``autoencoder.json`` (format, model config, scale, shift and what the run records), written by
:func:`save_autoencoder` and read by :func:`load_autoencoder`. Kept apart from the training recipe
(:mod:`denoisekit.train.recipes.autoencoder`) so that loading a run does not import the training engine."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..engine.checkpoint import load_weights
from ..io import load_json_format, load_tensors, save_tensors, write_atomic, write_text_atomic
from ..models.autoencoder import Autoencoder, AutoencoderConfig
from ..options import plain

FORMAT = "denoisekit.autoencoder/1"
WEIGHTS, META, METRICS = "autoencoder.safetensors", "autoencoder.json", "metrics.json"
CHECKPOINTS = "checkpoints"


def save_autoencoder(ae: Autoencoder, directory: str | os.PathLike[str], **info: Any) -> Path:
    """Write ``autoencoder.safetensors`` (weights, latent scale and shift) and ``autoencoder.json``, atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "config": plain(dataclasses.asdict(ae.config)),
            "scale_factor": float(ae.scale_factor), "shift": float(ae.shift), **info}
    write_atomic(d / WEIGHTS, lambda p: save_tensors(p, ae.state_dict(), {"format": FORMAT}))
    write_text_atomic(d / META, json.dumps(meta, indent=1) + "\n")
    return d


def load_autoencoder(path: str | os.PathLike[str]) -> Autoencoder:
    """The autoencoder of a finished run directory (or its ``autoencoder.json``), eval mode, on CPU.

    Missing files raise ``FileNotFoundError`` and corrupt ones ``ValueError``, naming the path; weights are
    safetensors, so nothing is unpickled."""
    p = Path(path)
    if p.is_file() and p.name == META:
        p = p.parent
    if not p.is_dir():
        raise FileNotFoundError(f"autoencoder directory {str(p)!r} does not exist")
    if not (p / META).is_file():
        hint = " (training has not finished: the run has checkpoints only)" if (p / CHECKPOINTS).is_dir() else ""
        raise FileNotFoundError(f"{p / META}: missing{hint}")
    meta = load_json_format(p / META, FORMAT)
    try:
        ae = Autoencoder(AutoencoderConfig(**meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p / META}: bad model config ({e})") from None
    load_weights(ae, load_tensors(p / WEIGHTS), str(p / WEIGHTS))
    return ae.eval().requires_grad_(False)
