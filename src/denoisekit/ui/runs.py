"""The runs the UI offers: run directories found under one root (never outside it: a symlink that leads out
is refused), loaded once each and kept; a run that cannot load is one line, the others still work."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..generation import LoadedModel

#: How deep under the root runs are looked for (``runs/group/run`` is depth 2).
MAX_DEPTH = 3
RUN_CONFIG = "config.yaml"
#: How many models with LoRA adapters stay loaded (each is its own copy of the run's network).
MAX_ADAPTED = 2


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, is ``root`` or lies under it."""
    try:
        path.resolve(strict=True).relative_to(root.resolve(strict=True))
    except (ValueError, OSError):
        return False
    return True


def find_runs(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Run directories under ``root`` (a ``config.yaml`` and a ``checkpoints/`` directory), as names relative
    to it, sorted; and one line per thing skipped (a symlink out of ``root``). A missing root is a
    ``NotADirectoryError``."""
    base = Path(root)
    if not base.is_dir():
        raise NotADirectoryError(f"runs directory {str(base)!r} does not exist or is not a directory")
    runs, skipped = [], []

    def visit(d: Path, depth: int) -> None:
        if not inside(d, base):
            skipped.append(f"{d.relative_to(base)}: a link out of the runs directory, refused")
            return
        if (d / RUN_CONFIG).is_file() and (d / "checkpoints").is_dir():
            runs.append(d.relative_to(base).as_posix() if d != base else ".")
            return
        if depth >= MAX_DEPTH:
            return
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as e:
            skipped.append(f"{d.relative_to(base)}: unreadable ({e.strerror or e})")
            return
        for child in children:
            visit(child, depth + 1)

    visit(base, 0)
    return sorted(runs), skipped


@dataclass
class RunLibrary:
    """The runs under ``root`` and their loaded models (each loaded on first use, then kept)."""

    root: Path
    device: str = "cpu"
    _models: dict[Any, LoadedModel] = field(default_factory=dict)
    _adapted: dict[Any, LoadedModel] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    def names(self) -> tuple[list[str], list[str]]:
        return find_runs(self.root)

    def path(self, name: str) -> Path:
        """The directory of run ``name``: under the root (no ``..``, no link out), else a ``ValueError``."""
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"run {name!r}: not a run under the runs directory")
        path = self.root / name
        if not inside(path, self.root) or not (path / RUN_CONFIG).is_file():
            raise ValueError(f"run {name!r}: not a run under the runs directory")
        return path

    def load(self, name: str, loras: Sequence[tuple[str, float]] = ()) -> LoadedModel:
        """Run ``name``'s model, with the LoRA adapters ``[(file, weight), ...]`` when given
        (:func:`~denoisekit.generation.adapters.with_loras`, as ``sample --lora``: they change the network in
        place, so an adapted model is its own load, the last :data:`MAX_ADAPTED` kept); a run that cannot load
        is a ``ValueError`` of one line naming it."""
        from ..generation.adapters import with_loras
        from ..train.run import load_model

        key = (name, tuple((str(f), float(w)) for f, w in loras))
        with self._lock:
            cache = self._models if not loras else self._adapted
            if key not in cache:
                path = self.path(name)
                try:
                    model = load_model(path, device=self.device)
                except Exception as e:  # noqa: BLE001 -- any failure to load is one line in the UI
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ValueError(f"run {name!r} cannot be loaded: {first}") from None
                if loras:
                    try:
                        model = with_loras(model, list(key[1]))
                    except FileNotFoundError as e:
                        raise ValueError(str(e)) from None
                    while len(cache) >= MAX_ADAPTED:
                        cache.pop(next(iter(cache)))
                cache[key] = model
            return cache[key]

    def adapters(self, role: str) -> list[str]:
        """The runs under the root that hold an adapter, ``role`` ``"lora"`` or ``"controlnet"`` (their latest
        checkpoint's ``state.json`` has ``lora_of`` / ``controlnet_of``), as names."""
        from ..engine.checkpoint import STATE_FILE, latest_checkpoint
        from ..io import load_json

        found = []
        for name in find_runs(self.root)[0]:
            try:
                ckpt = latest_checkpoint(self.root / name / "checkpoints")
                state = load_json(ckpt / STATE_FILE) if ckpt is not None else None
            except (OSError, ValueError):
                continue
            if isinstance(state, dict) and state.get(f"{role}_of"):
                found.append(name)
        return found

    def file(self, name: str) -> Path:
        """A run directory or file named relative to the root (an adapter): under it, else a ``ValueError``."""
        path = self.root / name
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or not inside(path, self.root):
            raise ValueError(f"{name!r}: not a file or run under the runs directory")
        return path

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        """What the controls need to know of a model: its condition, classes and default settings."""
        from ..conditioning import condition_keys, image_conditioner

        d, keys = model.defaults, condition_keys(model.condition)
        return {"kind": model.kind, "text": "text" in keys, "class": "labels" in keys,
                "classes": [model.classes[i] if i < len(model.classes) else f"class {i}"
                            for i in range(model.num_classes or 0)],
                "guided": model.guided, "image": image_conditioner(model.condition) is not None,
                "sampler": d.sampler, "nfe": int(d.nfe),
                "schedule": d.schedule, "cfg_scale": float(d.cfg_scale), "prompts": list(model.captions)}

