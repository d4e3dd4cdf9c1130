"""Runs that start from runs: which runs a run depends on, by path and content hash.

A run that starts from another run's weights (``init.from_run``), learns from a frozen one (``teacher.run``)
or stores only a delta on top of a base records, for each, the checkpoint it used and the sha256 of the
weights file it read (``state.json`` of every checkpoint, key ``depends``). Resuming or loading the run
recomputes the hashes and refuses, naming the path and what differs, when a dependency has changed since.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import file_sha256
from .checkpoint import latest_checkpoint

CHECKPOINTS, RUN_CONFIG = "checkpoints", "config.yaml"
WEIGHTS = ("ema", "model")


def run_checkpoint(run: str | os.PathLike[str], key: str = "run") -> Path:
    """The latest checkpoint directory of training run ``run`` (given by config ``key``); a clear error when
    there is none."""
    path = Path(run)
    if not path.is_dir():
        raise FileNotFoundError(f"{key} {str(path)!r} does not exist")
    if not (path / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"{key} {str(path)!r} has no {RUN_CONFIG} (is it a denoisekit training run?)")
    ckpt = latest_checkpoint(path / CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(f"{key} {str(path)!r} has no checkpoint yet")
    return ckpt


def record(role: str, run: str | os.PathLike[str], weights: str = "ema", key: str | None = None) -> dict[str, Any]:
    """What a dependent run stores about ``run``: the path as given, the checkpoint used and its hash. Errors
    name the config ``key`` that gave the path (default: the role)."""
    key = key or role
    if weights not in WEIGHTS:
        raise ValueError(f"{key}: weights {weights!r} unknown; allowed: {', '.join(WEIGHTS)}")
    ckpt = run_checkpoint(run, key)
    file = ckpt / f"{weights}.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{key} {str(run)!r}: {file} is missing")
    return {"role": role, "run": str(run), "resolved": str(Path(run).resolve()), "checkpoint": ckpt.name,
            "weights": weights, "sha256": file_sha256(file)}


def weights_file(dep: Mapping[str, Any]) -> Path:
    """The weights file a recorded dependency names (by the path as given, else where it was resolved)."""
    for base in (Path(dep["run"]), Path(dep.get("resolved", dep["run"]))):
        file = base / CHECKPOINTS / dep["checkpoint"] / f"{dep['weights']}.safetensors"
        if file.is_file():
            return file
    raise FileNotFoundError(f"{dep['role']} run {dep['run']!r}: its checkpoint {dep['checkpoint']} is gone "
                            f"(the run changed since this run used it)")


def check(recorded: Sequence[Mapping[str, Any]], source: str) -> None:
    """Every recorded dependency still holds the weights it had; else one line naming the path and what differs."""
    for dep in recorded:
        try:
            file = weights_file(dep)
        except FileNotFoundError as e:
            raise ValueError(f"{source}: {e}") from None
        now = file_sha256(file)
        if now != dep["sha256"]:
            raise ValueError(f"{source}: {dep['role']} run {dep['run']!r} changed since it was used "
                             f"({file.name} of {dep['checkpoint']}: sha256 {dep['sha256'][:12]}... then, "
                             f"{now[:12]}... now)")


def same(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> str | None:
    """What differs between two dependency lists (by role, path and hash), or None."""
    a = {d["role"]: d for d in old}
    b = {d["role"]: d for d in new}
    for role in sorted(a.keys() | b.keys()):
        was, now = a.get(role), b.get(role)
        if was is None or now is None:
            return f"{role} run was {was['run'] if was else 'none'!r}, now {now['run'] if now else 'none'!r}"
        if was["run"] != now["run"]:
            return f"{role} run was {was['run']!r}, now {now['run']!r}"
        if was["sha256"] != now["sha256"]:
            return (f"{role} run {was['run']!r} changed since it was used ({was['checkpoint']}: sha256 "
                    f"{was['sha256'][:12]}... then, {now['checkpoint']}: {now['sha256'][:12]}... now)")
    return None
