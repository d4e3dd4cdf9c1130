"""What every subcommand shares: the one-line error for bad input, argument types, thread control, the
``--device`` of commands that run a network and the final line printed once under ``accelerate launch``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from .._threads import default_threads, openmp_env

PROG = "denoisekit"


class UsageError(Exception):
    """Bad command-line input: reported as one line and exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print the whole usage first
        raise UsageError(f"{message} (see '{self.prog} --help')")


def key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "b=cosine"]`` -> ``{"a": 1, "b": "cosine"}`` (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


#: What ``--threads`` says when not given (the programs' default, :func:`program_threads`).
THREADS_HELP = "torch CPU threads (default: one per CPU core not kept busy by another process, seen at start)"


def program_threads(args: argparse.Namespace) -> int:
    """The torch threads of a command run as the program: ``--threads`` if given, torch's count if the user set
    ``OMP_NUM_THREADS``, else :func:`~denoisekit._threads.default_threads` (a busy core costs its share;
    benchmarks/RESULTS.md, "Threads on a busy machine")."""
    if getattr(args, "threads", None) is not None:
        return int(args.threads)
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    return default_threads(limit=torch.get_num_threads())


def _is_the_program() -> bool:
    """This interpreter runs ``denoisekit`` itself: the installed script, or ``python -m denoisekit.cli``."""
    first = sys.argv[0] if sys.argv else ""
    return (os.path.basename(first) in ("denoisekit", "denoisekit.exe")
            or first.endswith(os.path.join("denoisekit", "cli", "__main__.py")))


def reexec_for_openmp(n_threads: int) -> None:
    """Start this program again with a passive OpenMP wait policy when it will run ``n_threads`` > 1 threads
    and the user chose no policy (:func:`~denoisekit._threads.openmp_env`); returns when there is nothing to
    do. The runtime reads its environment when torch loads, which the package has done by now; ``exec``
    keeps the PID, the streams and the exit code, and costs one more start-up (about 3 s on 2 idle cores)."""
    env = openmp_env(os.environ)
    if (n_threads > 1 and env and os.name == "posix" and sys.executable and _is_the_program()
            and sys.orig_argv[1:2] != ["-"]):  # a script read from stdin cannot be read again
        os.environ.update(env)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, restoring the previous count (``main`` may run in-process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: ``--device`` values besides ``cuda:N``: ``auto`` is CUDA when available, else the CPU.
DEVICES = ("auto", "cpu", "cuda")


def add_device(p: argparse.ArgumentParser, *, training: bool = False) -> None:
    """``--device`` of a command that runs a network (:func:`resolve_device`). A training command's
    (``training``) becomes ``--set train.device=...`` (:class:`TrainDevice`): default the config's."""
    if training:
        p.add_argument("--device", action=TrainDevice, metavar="DEVICE",
                       help="where training runs: auto (CUDA when available, else the CPU; with several GPUs use "
                            "accelerate launch), cpu or cuda (default: the config's train.device); the same as "
                            "--set train.device=auto|cpu")
        return
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where the network runs: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N "
                        "(default auto); results do not depend on it beyond float rounding (seeds are drawn on the "
                        "CPU)")


class TrainDevice(argparse.Action):
    """``--device`` of a training command, as the override ``train.device=cpu|auto`` appended to ``--set``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option_string: str | None = None) -> None:
        device = resolve_device(str(value))
        if device.type == "cuda" and device.index not in (None, 0):
            raise UsageError(f"--device {value!r}: training picks its GPU itself; choose one with "
                             f"CUDA_VISIBLE_DEVICES={device.index} and --device cuda")
        setattr(namespace, self.dest, str(device))
        target = "cpu" if device.type == "cpu" else "auto"  # the engine's CUDA is accelerate's choice: auto
        namespace.set = [*(getattr(namespace, "set", None) or []), f"train.device={target}"]


def resolve_device(text: str) -> torch.device:
    """``--device``: ``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device that is not there is a
    :class:`UsageError` naming it and the allowed values."""
    name = text.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise UsageError(f"--device {text!r}: unknown device; allowed: {', '.join(DEVICES)}, cuda:N")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= count:
            raise UsageError(f"--device {text!r}: no such CUDA device on this machine ({count} found); "
                             f"use --device cpu (or auto)")
    return torch.device(name)


def check_image_out(out: str) -> Path:
    """``--out`` of a command writing images: a ``.png`` grid or an ``.npz``."""
    path = Path(out)
    if path.suffix.lower() not in (".png", ".npz"):
        raise UsageError(f"--out must end in .png or .npz, got {path.name!r}")
    return path


def load_run_model(args: argparse.Namespace) -> Any:
    """The run of ``args.run`` (``--weights``, ``--device``) as a :class:`~denoisekit.generation.LoadedModel`."""
    from ..train.run import load_model

    return load_model(args.run, weights=args.weights, device=resolve_device(args.device))


def is_main_process() -> bool:
    """Whether this process prints a command's final line: the only one, or rank 0 under ``accelerate launch``
    or ``torchrun`` (which set ``RANK``), so a line prints once rather than once per process."""
    return os.environ.get("RANK", "0") in ("", "0")


def say(*parts: object) -> None:
    """``print`` on the main process only (:func:`is_main_process`)."""
    if is_main_process():
        print(*parts)


def guidance_scale(text: str) -> float:
    """``--cfg``: a number >= 0 (0: the unconditional model, 1: no guidance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"the guidance scale must be >= 0 (1 = no guidance), got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def npz_images(flag: str, name: str, key: str, arrays: dict[str, Any]) -> torch.Tensor:
    """``arrays[key]``, uint8 ``(N, H, W[, C])`` images of an .npz given as ``flag``, as ``(N, C, H, W)`` in
    ``[-1, 1]``; a missing key or another dtype or shape is a :class:`UsageError` naming the file."""
    import numpy as np

    from ..data.transforms import uint8_to_tensor

    if key not in arrays:
        raise UsageError(f"{flag} {name}: expected an {key!r} array, found {', '.join(sorted(arrays)) or 'none'}")
    a = arrays[key]
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise UsageError(f"{flag} {name}: {key!r} must be uint8 (N, H, W[, C]), got {a.dtype} {a.shape}")
    return torch.stack([uint8_to_tensor(im) for im in a])
