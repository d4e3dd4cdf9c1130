"""Training checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a directory ``<root>/step_00001000/`` holding

- ``model.safetensors`` and ``ema.safetensors``: the network's and the EMA's ``state_dict``;
- ``optimizer.safetensors``: the optimiser's per-parameter tensors (``state.<index>.<name>``);
- ``recipe.safetensors`` (only when the recipe keeps any): a recipe's own tensor state, e.g. the target
  network of consistency distillation (:meth:`denoisekit.engine.recipe.Recipe.extra_tensors`);
- ``state.json``: step, optimiser hyper-parameters and scalar state, LR-scheduler state, EMA state,
  the data position, NaN counters and every process's RNG states (torch, numpy, python).

Nothing is pickled, so loading a checkpoint from someone else runs no code. The directory is built
under a temporary name, every file is fsynced, and only then renamed into place (``os.replace``),
so a crash or a full disk never leaves a half-written checkpoint where :func:`latest_checkpoint`
looks. Older checkpoints beyond the last ``keep_last`` are deleted after a successful write.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..io import fsync_dir, fsync_file, is_no_space, load_json_format, load_tensors, save_tensors

FORMAT = "denoisekit.checkpoint/1"
MODEL_FILE, EMA_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"
EXTRA_FILE = "recipe.safetensors"
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


def check_rng(state: Any, source: str) -> None:
    """Refuse an RNG state :func:`restore_rng` would choke on (wrong sizes, types or hex), naming the part."""
    def bad(part: str, why: str) -> ValueError:
        return ValueError(f"{source}: RNG state {part} {why}")

    if not isinstance(state, Mapping):
        raise bad("", f"is {type(state).__name__}, expected an object with python, numpy and torch")
    py = state.get("python")
    if not (isinstance(py, list) and len(py) == 3 and isinstance(py[1], list) and len(py[1]) == 625
            and all(isinstance(v, int) and 0 <= v < 2**32 for v in py[1])):
        raise bad("'python'", "is not [version, 625 words, gauss]")
    n = state.get("numpy")
    if not (isinstance(n, Mapping) and n.get("name") == "MT19937" and isinstance(n.get("keys"), list)
            and len(n["keys"]) == 624 and all(isinstance(v, int) and 0 <= v < 2**32 for v in n["keys"])
            and isinstance(n.get("pos"), int) and 0 <= n["pos"] <= 624):
        raise bad("'numpy'", "is not an MT19937 state (624 keys, pos in 0..624)")
    expected = {"torch": torch.get_rng_state().numel()}
    for part, size in expected.items():
        value = state.get(part)
        try:
            ok = isinstance(value, str) and len(bytes.fromhex(value)) == size
        except ValueError:
            ok = False
        if not ok:
            raise bad(repr(part), f"is not {size} bytes of hex")


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
#
# ``step_N`` is complete by construction (it appears only by a rename). Re-saving an existing step (training
# again over a step whose checkpoint was corrupt) swaps in three renames: the finished ``.tmp-step_N-*`` becomes
# ``.new-step_N`` (complete), ``step_N`` becomes ``.old-step_N``, ``.new-step_N`` becomes ``step_N``. A kill at
# any moment leaves a complete copy of step N under one of the three names: readers find it
# (:func:`list_checkpoints`) and the next writer puts it back in place (:func:`recover`). Only ``.tmp-*`` can
# be incomplete.

_ASIDE = re.compile(r"^\.(new|old)-(step_\d{8,})(?:-\d+)?$")


def list_checkpoints(root: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first. A step whose swap was
    interrupted is found under its ``.new-`` (preferred) or ``.old-`` name."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: dict[int, tuple[int, Path]] = {}
    for p in root.iterdir():
        if not p.is_dir():
            continue
        if m := _STEP_DIR.match(p.name):
            rank, step = 0, int(m.group(1))
        elif m := _ASIDE.match(p.name):
            rank, step = (1 if m.group(1) == "new" else 2), int(m.group(2)[5:])
        else:
            continue
        if step not in found or rank < found[step][0]:
            found[step] = (rank, p)
    return sorted((step, p) for step, (_, p) in found.items())


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def recover(root: str | os.PathLike[str]) -> list[str]:
    """Finish or undo an interrupted save (the run's one writer calls this before it writes): a complete
    ``.new-``/``.old-`` copy whose ``step_N`` is missing is renamed back into place, then the leftovers
    (``.tmp-*``, which may be half-written, and superseded copies) are removed. Returns what was restored."""
    root = Path(root)
    if not root.is_dir():
        return []
    restored = []
    for step, path in list_checkpoints(root):
        if path.name != step_dir_name(step):
            os.replace(path, root / step_dir_name(step))
            restored.append(f"{path.name} -> {step_dir_name(step)}")
    if restored:
        fsync_dir(root)
    for p in root.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp-") or _ASIDE.match(p.name)):
            shutil.rmtree(p, ignore_errors=True)
    return restored


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename an unreadable checkpoint ``step_N`` to ``step_N.corrupt`` (kept for inspection, never loaded)."""
    path = Path(path)
    target, k = path.with_name(f"{path.name}.corrupt"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.corrupt-{k}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def tensor_bytes(*parts: Mapping[str, Any]) -> int:
    """Bytes of the tensors in (nested) mappings: what a checkpoint of them needs on disk, near enough."""
    total = 0
    for part in parts:
        for v in part.values():
            if isinstance(v, Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, Mapping):
                total += tensor_bytes(v)
    return total


def _no_space(root: Path, step: int, need: int, previous: Path | None) -> OSError:
    free = shutil.disk_usage(root).free if root.exists() else 0
    kept = f"the last checkpoint {previous.name} is intact" if previous is not None else "no checkpoint existed yet"
    return OSError(errno.ENOSPC, f"no space left on the device of {root} while writing checkpoint "
                   f"{step_dir_name(step)} (it needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free); "
                   f"nothing was lost: {kept}. Free some space and resume (--resume)")


def save_checkpoint(root: str | os.PathLike[str], step: int, *, model: Mapping[str, Tensor],
                    ema: Mapping[str, Tensor], optimizer: Mapping[str, Any], state: Mapping[str, Any],
                    keep_last: int = 3, extra: Mapping[str, Tensor] | None = None) -> Path:
    """Write ``<root>/step_<step>/`` atomically (see the module docstring) and prune to ``keep_last``.

    ``optimizer`` is ``optimizer.state_dict()``; ``state`` is any JSON-able mapping (scheduler, EMA,
    data position, RNG...), stored under ``state.json`` with ``format``, ``step`` and the optimiser's
    scalar state added. A full disk raises ``OSError(ENOSPC)`` saying how much a checkpoint needs; the
    checkpoints already there are untouched.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    previous = latest_checkpoint(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    optim_tensors, optim_rest = flatten_optimizer_state(optimizer)
    try:
        os.chmod(tmp, 0o755)
        meta = {"format": FORMAT, "step": str(step)}
        save_tensors(tmp / MODEL_FILE, model, meta)
        save_tensors(tmp / EMA_FILE, ema, meta)
        save_tensors(tmp / OPTIM_FILE, optim_tensors, meta)
        if extra:
            save_tensors(tmp / EXTRA_FILE, extra, meta)
        doc = {"format": FORMAT, "step": step, "optimizer": optim_rest, **state}
        (tmp / STATE_FILE).write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
            fsync_file(f)
        fsync_dir(tmp)
        if final.exists():  # re-saving a step: swap (see above), never a moment without a complete step N
            new, old = root / f".new-{final.name}", root / f".old-{final.name}"
            for leftover in (new, old):
                shutil.rmtree(leftover, ignore_errors=True)
            os.replace(tmp, new)
            fsync_dir(root)
            os.replace(final, old)
            os.replace(new, final)
            fsync_dir(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(e):
            raise _no_space(root, step, tensor_bytes(model, ema, optim_tensors), previous) from None
        raise
    if keep_last > 0:
        for _, old_path in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old_path, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike[str], *, weights_only: bool = False) -> dict[str, Any]:
    """Read a checkpoint directory: ``{"step", "model", "ema", "optimizer", "state"}`` (and ``"extra"``, the
    recipe's ``recipe.safetensors``, where there is one).

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
    if (path / EXTRA_FILE).exists():  # a recipe's own tensor state (Recipe.extra_tensors), when it keeps any
        out["extra"] = load_tensors(path / EXTRA_FILE)
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
        _check_tensor(k, state[k], v, source)
    net.load_state_dict(dict(state))


def _check_tensor(key: str, value: Tensor, expected: Tensor, source: str) -> None:
    """Same kind of dtype (a float tensor may be stored at another precision, with a warning) and finite."""
    if value.dtype != expected.dtype:
        if not (value.is_floating_point() and expected.is_floating_point()):
            raise ValueError(f"{source}: tensor {key!r} is {value.dtype}, the model needs {expected.dtype}")
        warnings.warn(f"{source}: tensor {key!r} is stored as {value.dtype}; loading it as {expected.dtype}")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise ValueError(f"{source}: tensor {key!r} contains NaN or inf")


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
        _check_tensor(k, v, expected[k], source)
    net.load_state_dict(dict(delta), strict=False)
