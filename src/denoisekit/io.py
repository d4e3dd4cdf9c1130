"""Files at the bottom of the stack: atomic writes, JSON, safetensors and the cache directory.

Every file denoisekit writes goes through :func:`write_atomic`: it is built under a temporary name beside
its destination, fsynced and only then renamed into place (``os.replace``), so a crash or a full disk never
leaves a half-written file where a reader looks. Nothing is ever pickled: tensors are safetensors, the rest
JSON or YAML.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor


def default_cache_dir() -> Path:
    """``$DENOISEKIT_CACHE``, else ``$XDG_CACHE_HOME/denoisekit``, else ``~/.cache/denoisekit``."""
    if os.environ.get("DENOISEKIT_CACHE"):
        return Path(os.environ["DENOISEKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "denoisekit"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Write ``path`` via ``write(tmp)`` to a temporary file beside it, fsync, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a run directory is meant to be shared
        fsync_file(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if is_no_space(e):
            free = shutil.disk_usage(path.parent).free / 2**20
            raise OSError(errno.ENOSPC, f"no space left on the device writing {path} ({free:.1f} MiB free); "
                          f"nothing was lost: {'its previous version is intact' if path.exists() else 'it did not exist yet'}"
                          ) from None
        raise
    fsync_dir(path.parent)


def is_no_space(e: BaseException) -> bool:
    """A full disk or quota: ``OSError`` ENOSPC/EDQUOT, or safetensors' error wrapping one."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return type(e).__name__ == "SafetensorError" and ("No space left" in str(e) or "os error 28" in str(e))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=True) + "\n")


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Save tensors (moved to CPU, made contiguous) to a safetensors file (not atomically: see
    :func:`save_tensors_atomic`)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(state, str(path), metadata=metadata)


def save_tensors_atomic(path: str | os.PathLike[str], tensors: Mapping[str, Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    write_atomic(path, lambda p: save_tensors(p, tensors, metadata))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a safetensors file; a missing file is ``FileNotFoundError``, a corrupt one ``ValueError``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"{path}: cannot read safetensors ({e})") from None


def load_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_json_format(path: str | os.PathLike[str], fmt: str) -> dict[str, Any]:
    """A JSON object whose ``"format"`` is ``fmt`` (our files say what they are); else ``ValueError``."""
    data = load_json(path)
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: format is {found!r}, expected {fmt!r}")
    return data
