"""One writer per run directory: an exclusive ``fcntl`` lock on ``<run>/.lock``, held while a run trains.

A second training process on the same directory is refused with one line naming the PID that holds it,
instead of both writing config, logs and checkpoints over each other. Readers (``sample``, ``eval``) take
no lock: every file they read is replaced atomically. The operating system drops the lock when its
process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

LOCK_FILE = ".lock"


class RunLocked(FileExistsError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """``RunLock(run_dir)`` takes the lock (or raises :class:`RunLocked`); :meth:`release` drops it."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # no fcntl (Windows): one writer is then the user's care
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            raise RunLocked(f"{self.path.parent} is being written by another training process (PID {holder}); "
                            f"wait for it to finish or stop it, or choose another output directory") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    def release(self) -> None:
        if self.fd is not None:
            self._finalizer() if hasattr(self, "_finalizer") else os.close(self.fd)
            self.fd = None
