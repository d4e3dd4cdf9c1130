"""Starting the app safely: loopback and no sharing unless asked, and never either without a password; only
the outputs directory and the app's own cache are served (the runs directory is blocked)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import default_cache_dir
from .runs import RunLibrary

LOOPBACK, EVERY_INTERFACE = "127.0.0.1", "0.0.0.0"
#: The largest upload the server accepts at all (the Info tab's own check is tighter per file).
MAX_FILE_SIZE = "10mb"


@dataclass(frozen=True)
class ServeOptions:
    """How ``denoisekit ui`` serves: ``port`` (0: a free one), ``listen`` (every interface), ``share`` (a
    Gradio tunnel), ``auth`` (``user:pass``), ``outputs`` (default ``<cache>/ui/outputs``)."""

    port: int = 7860
    listen: bool = False
    share: bool = False
    auth: str | None = None
    outputs: Path | None = None

    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` of ``auth``; ``--listen``/``--share`` without it is a ``ValueError``."""
        if self.auth is None:
            if self.listen or self.share:
                raise ValueError("--listen and --share expose the app beyond this machine: give --auth USER:PASS")
            return None
        user, sep, password = self.auth.partition(":")
        if not sep or not user or not password:
            raise ValueError("--auth must be USER:PASS (both non-empty)")
        return user, password


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now (the OS's pick)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cache_dir() -> Path:
    """The app's own cache (Gradio's uploads and served copies): ``<denoisekit cache>/ui``."""
    return default_cache_dir() / "ui"


def prepare(runs_dir: str | os.PathLike[str], options: ServeOptions, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The app and ``launch()``'s keyword arguments for ``options`` (checked before anything starts)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(cache_dir() / "gradio")  # read when the app's components are made
    credentials = options.credentials()
    if not 0 <= options.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {options.port}")
    root = Path(runs_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"runs directory {str(root)!r} does not exist or is not a directory")
    outputs = (options.outputs or cache_dir() / "outputs").resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    if outputs.is_relative_to(root.resolve()):
        raise ValueError(f"--outputs {outputs} is inside the runs directory, which is never served: put it elsewhere")
    from .app import build_app

    app = build_app(RunLibrary(root, device=device), outputs)
    host = EVERY_INTERFACE if options.listen else LOOPBACK
    kwargs = {"server_name": host, "server_port": options.port or free_port(), "share": options.share,
              "auth": credentials, "allowed_paths": [str(outputs)],
              "blocked_paths": [str(root.resolve())], "max_file_size": MAX_FILE_SIZE, "show_error": False,
              "enable_monitoring": False, "run_history": False, "mcp_server": False, "ssr_mode": False,
              "footer_links": ["api"], "quiet": True}
    return app, kwargs
