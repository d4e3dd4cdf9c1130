"""Training checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a directory ``<root>/step_00001000/`` holding

- ``model.safetensors`` and ``ema.safetensors``: the network's and the EMA's ``state_dict``;
- ``optimizer.safetensors``: the optimiser's per-parameter tensors (``state.<index>.<name>``);
- ``state.json``: step, optimiser hyper-parameters and scalar state, LR-scheduler state, EMA state,
  the data position, NaN counters and every process's RNG states (torch, numpy, python).

Nothing is pickled, so loading a checkpoint from someone else runs no code. The directory is built
under a temporary name, every file is fsynced, and only then renamed into place (``os.replace``),
so a crash or a full disk never leaves a half-written checkpoint where :func:`latest_checkpoint`
looks. Older checkpoints beyond the last ``keep_last`` are deleted after a successful write.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..io import fsync_dir, fsync_file, load_json_format, load_tensors, save_tensors

FORMAT = "denoisekit.checkpoint/1"
MODEL_FILE, EMA_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# ---------------------------------------------------------------------------------------------
# Optimiser and RNG state without pickle


def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<param>.<name>``) and a JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: Mapping[str, Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in rest["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and CUDA) as JSON-able values."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.numpy().tobytes().hex() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(torch.frombuffer(bytearray.fromhex(state["torch"]), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.frombuffer(bytearray.fromhex(s), dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------------
# Checkpoint directories


def list_checkpoints(root: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def clean_stale(root: str | os.PathLike[str]) -> None:
    """Remove temporary directories left by an interrupted save."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(root: str | os.PathLike[str], step: int, *, model: Mapping[str, Tensor],
                    ema: Mapping[str, Tensor], optimizer: Mapping[str, Any], state: Mapping[str, Any],
                    keep_last: int = 3) -> Path:
    """Write ``<root>/step_<step>/`` atomically (see the module docstring) and prune to ``keep_last``.

    ``optimizer`` is ``optimizer.state_dict()``; ``state`` is any JSON-able mapping (scheduler, EMA,
    data position, RNG...), stored under ``state.json`` with ``format``, ``step`` and the optimiser's
    scalar state added.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        os.chmod(tmp, 0o755)
        meta = {"format": FORMAT, "step": str(step)}
        save_tensors(tmp / MODEL_FILE, model, meta)
        save_tensors(tmp / EMA_FILE, ema, meta)
        optim_tensors, optim_rest = flatten_optimizer_state(optimizer)
        save_tensors(tmp / OPTIM_FILE, optim_tensors, meta)
        doc = {"format": FORMAT, "step": step, "optimizer": optim_rest, **state}
        (tmp / STATE_FILE).write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n")
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        if final.exists():  # re-saving a step (after a resume): swap, never delete first
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last > 0:
        for _, old_path in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old_path, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike[str], *, weights_only: bool = False) -> dict[str, Any]:
    """Read a checkpoint directory: ``{"step", "model", "ema", "optimizer", "state"}``.

    ``weights_only`` skips the optimiser. Missing files raise ``FileNotFoundError`` naming them;
    corrupt or foreign ones ``ValueError``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    state = load_json_format(path / STATE_FILE, FORMAT)
    if not isinstance(state.get("step"), int) or state["step"] < 0:
        raise ValueError(f"{path / STATE_FILE}: 'step' must be an integer >= 0, got {state.get('step')!r}")
    out: dict[str, Any] = {"step": state["step"], "state": state,
                           "model": load_tensors(path / MODEL_FILE), "ema": load_tensors(path / EMA_FILE)}
    if not weights_only:
        try:
            out["optimizer"] = unflatten_optimizer_state(load_tensors(path / OPTIM_FILE), state["optimizer"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: malformed optimiser state ({e!r})") from None
    return out


def load_weights(net: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict`` with errors naming the file, the mismatched keys and shapes, and NaNs."""
    expected = net.state_dict()
    missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unknown:
        raise ValueError(f"{source}: weights do not match the config's model (missing: {', '.join(missing[:8]) or '-'};"
                         f" unexpected: {', '.join(unknown[:8]) or '-'})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ValueError(f"{source}: tensor {k!r} has shape {tuple(state[k].shape)}, the config needs {tuple(v.shape)}")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise ValueError(f"{source}: tensor {k!r} contains NaN or inf")
    net.load_state_dict(dict(state))


def load_delta(net: nn.Module, delta: Mapping[str, Tensor], source: str) -> None:
    """Overwrite the tensors of ``net`` named in ``delta`` (a run that trained part of a base); every name must
    exist with its shape and be finite. Errors name the file and the tensor."""
    expected = net.state_dict()
    unknown = sorted(set(delta) - set(expected))
    if unknown:
        raise ValueError(f"{source}: the delta names tensors the model does not have: {', '.join(unknown[:8])}")
    for k, v in delta.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{source}: tensor {k!r} has shape {tuple(v.shape)}, the model needs {tuple(expected[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{source}: tensor {k!r} contains NaN or inf")
    net.load_state_dict(dict(delta), strict=False)
