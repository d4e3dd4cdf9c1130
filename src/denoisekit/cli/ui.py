"""``denoisekit ui [RUNS_DIR]``: the web UI (Gradio, the ``ui`` extra) over the runs in a directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import UsageError, add_device, resolve_device, say


def _add_ui(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="?", default="runs", help="directory whose run directories the UI offers "
                   "(default: runs); runs are looked for only inside it, links out of it are refused")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: a free one)")
    p.add_argument("--listen", action="store_true",
                   help="serve on every interface instead of 127.0.0.1 only (needs --auth)")
    p.add_argument("--share", action="store_true", help="a public Gradio share link (needs --auth and internet)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="password-protect the app")
    p.add_argument("--outputs", default=None, metavar="DIR",
                   help="where generated PNGs go (default: the cache's ui/outputs); must be outside RUNS_DIR")
    add_device(p)


def _run_ui(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the UI needs gradio: pip install 'denoisekit[ui]'") from None
    from ..ui.server import ServeOptions, prepare

    start = time.perf_counter()
    options = ServeOptions(port=args.port, listen=args.listen, share=args.share, auth=args.auth,
                           outputs=Path(args.outputs) if args.outputs else None)
    try:
        app, kwargs = prepare(args.runs, options, device=resolve_device(args.device))
    except ValueError as e:
        raise UsageError(str(e)) from None
    app.queue(default_concurrency_limit=1)
    _, url, share_url = app.launch(prevent_thread_lock=True, **kwargs)
    say(f"denoisekit ui: serving {args.runs} at {url} (started in {time.perf_counter() - start:.1f} s)"
        + (f", shared at {share_url}" if share_url else "") + "; Ctrl-C stops it")
    try:
        app.block_thread()
    finally:
        app.close()
    return 0


COMMANDS = {"ui": ("web UI (Gradio) over the runs in a directory", _add_ui, _run_ui)}
