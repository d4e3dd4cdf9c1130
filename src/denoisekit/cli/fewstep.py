"""``denoisekit distill-progressive``: progressive distillation's rounds, N -> N/2 -> ... -> 1 steps.

    denoisekit distill-progressive runs/digits --out runs/digits-pd --start 8 --set train.steps=2000
    denoisekit sample runs/digits-pd/nfe-1 --out one-step.png      # each student samples at its own step count

One ordinary run per round (:mod:`denoisekit.train.halving`); the consistency recipes are ``denoisekit train``
with ``train.recipe: consistency_distill`` or ``consistency_train``.
"""

from __future__ import annotations

import argparse
import time

import torch

from .common import THREADS_HELP, add_device, positive_int, say, threads


def _add_progressive(p: argparse.ArgumentParser) -> None:
    p.add_argument("teacher", help="the teacher run (a diffusion run, or a progressive student of an earlier round)")
    p.add_argument("--out", required=True, help="directory of the rounds' runs (OUT/nfe-N, ...)")
    p.add_argument("--start", type=positive_int, required=True,
                   help="the first student's DDIM steps, a power of two (its teacher takes twice as many)")
    p.add_argument("--stop", type=positive_int, default=1, help="the last round's steps (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override of every round, repeatable (e.g. --set train.steps=2000)")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p, training=True)


def _run_progressive(args: argparse.Namespace) -> int:
    from ..train.halving import distill_progressively

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        runs = distill_progressively(args.teacher, args.out, args.start, stop=args.stop, overrides=args.set,
                                     progress=not args.quiet)
    say(f"trained {len(runs)} rounds in {time.perf_counter() - start:.0f} s: "
        + ", ".join(f"{r} ({r.name[4:]} steps)" for r in runs))
    return 0


COMMANDS = {
    "distill-progressive": ("progressive distillation: students of N/2, N/4, ..., 1 DDIM steps from a teacher run",
                            _add_progressive, _run_progressive),
}
