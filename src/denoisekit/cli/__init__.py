"""The ``denoisekit`` command line.

    denoisekit train2d --data moons --process ddpm --prediction eps --steps 3000 --out runs/moons
    denoisekit sample2d runs/moons --sampler dpmpp_2m --nfe 10 --out samples.png --gif traj.gif
    denoisekit train configs/digits-unet.yaml --out runs/digits [--set train.steps=500] [--resume]
    denoisekit sample runs/digits --n 100 --sampler dpmpp_2m --nfe 20 --cfg 2 --label all --out grid.png
    denoisekit tune runs/digits --nfe 5 --out solver.json && denoisekit sample runs/digits --solver solver.json ...
    denoisekit eval samples.npz --ref digits
    denoisekit train-classifier configs/classifier/digits.yaml --out runs/digits-classifier
    denoisekit list

Each subcommand is a triple ``(help, add_arguments(parser), run(args) -> int)`` in :data:`COMMANDS`.
Bad input (unknown names, a missing run directory, NFE < 1) is one line ``denoisekit: error: ...``
on stderr and exit code 2; a diverged model or run is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..data import DATASETS, IMAGE_DATASETS
from ..io import is_no_space
from ..losses import NOISE_LEVELS, WEIGHTINGS
from ..models import MODELS
from ..prediction import PREDICTIONS
from ..process import PROCESSES
from ..samplers import SAMPLERS
from ..schedules import SCHEDULES
from . import clip, distill, edit, fewstep, image, interop, joint, tools, toy2d, ui
from .common import PROG, UsageError, Parser, program_threads, reexec_for_openmp, threads


# -------------------------------------------------------------------------------------------- list

def _add_list(p: argparse.ArgumentParser) -> None:
    pass


def _run_list(args: argparse.Namespace) -> int:
    sections = {
        "processes": list(PROCESSES), "predictions": list(PREDICTIONS), "samplers": list(SAMPLERS),
        "schedules": list(SCHEDULES), "datasets (2-D)": list(DATASETS), "datasets (images)": list(IMAGE_DATASETS), "models": list(MODELS),
        "noise levels": list(NOISE_LEVELS), "loss weightings": list(WEIGHTINGS),
    }
    for name, items in sections.items():
        print(f"{name}: {', '.join(items)}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train2d": ("train a diffusion model on a 2-D toy dataset", toy2d._add_train2d, toy2d._run_train2d),
    "sample2d": ("sample a 2-D run: scatter plot, optional GIF, metrics",
                 toy2d._add_sample2d, toy2d._run_sample2d),
    **image.COMMANDS,
    **edit.COMMANDS,
    **tools.COMMANDS,
    **clip.COMMANDS,
    **interop.COMMANDS,
    **ui.COMMANDS,
    **joint.COMMANDS,
    **distill.COMMANDS,
    **fewstep.COMMANDS,
    "list": ("list registered processes, predictions, samplers, schedules, datasets", _add_list, _run_list),
}


#: ``--quiet`` where a command does not define its own.
QUIET_HELP = "no progress bars or notes (warnings, errors and the final line still print)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Train, sample and evaluate diffusion and flow models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (help_text, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        if "quiet" not in {a.dest for a in p._actions}:  # every command takes --quiet
            p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
        p.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``denoisekit``): returns the exit code; bad input is one error line and code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if argv is not None:  # in-process (tests, notebooks): the caller's torch threads stand
            return int(args.handler(args))
        n = program_threads(args)
        if "threads" in args:  # the commands that may run long; eval's feature network is short
            reexec_for_openmp(n)
        with threads(n):
            return int(args.handler(args))
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged model or run: not bad input, but no traceback either
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk says where and that nothing was lost (denoisekit.io.is_no_space)
        if not is_no_space(e):
            raise
        print(f"{PROG}: error: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # a run stopped by SIGTERM / Ctrl-C says where it stands (TrainingStopped)
        print(f"{PROG}: {e or 'interrupted'}", file=sys.stderr)
        return int(getattr(e, "exit_code", 130))

