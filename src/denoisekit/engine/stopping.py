"""Stopping a run cleanly: SIGTERM (a job scheduler's stop, ``kill``) or Ctrl-C finishes the step in
progress, saves a checkpoint and raises :class:`TrainingStopped`, which says where the run stands. A second
Ctrl-C stops at once (nothing since the last checkpoint is kept)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class TrainingStopped(KeyboardInterrupt):
    """The run was stopped by a signal after saving a checkpoint; ``exit_code`` is the shell's 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Set by the handlers of :func:`catch_stop_signals`; the training loop polls :attr:`signum`."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """Within the block, SIGTERM and SIGINT set the request instead of killing the process (a second
    SIGINT raises ``KeyboardInterrupt`` at once). Outside the main thread signals cannot be caught: the
    request then never fires and the default behaviour stays."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
