"""``denoisekit train-classifier`` and ``train-autoencoder``: the networks that serve a diffusion model
(a noise-conditional classifier for guidance, an autoencoder for latent diffusion)."""

from __future__ import annotations

import argparse
import time

import torch

from .common import THREADS_HELP, add_device, positive_int, say, threads


def _add_trainer_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("config", help=f"YAML config of the {what} (see configs/{what}/)")
    p.add_argument("--out", required=True, help=f"directory to write the {what} to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    add_device(p, training=True)


def _add_train_classifier(p: argparse.ArgumentParser) -> None:
    _add_trainer_args(p, "classifier")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run's latest checkpoint")


def _run_train_classifier(args: argparse.Namespace) -> int:
    from ..train.classifier import run_train_classifier

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        run_train_classifier(args.config, args.out, args.set, resume=args.resume, progress=not args.quiet)
    say(f"trained in {time.perf_counter() - start:.0f} s; use it with "
          f"'denoisekit sample RUN --classifier {args.out} --classifier-scale S'")
    return 0


def _add_train_autoencoder(p: argparse.ArgumentParser) -> None:
    _add_trainer_args(p, "autoencoder")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run's latest checkpoint")


def _run_train_autoencoder(args: argparse.Namespace) -> int:
    from ..train.autoencoder import run_train_autoencoder

    start = time.perf_counter()
    with threads(args.threads or torch.get_num_threads()):
        code = run_train_autoencoder(args.config, args.out, args.set, resume=args.resume, progress=not args.quiet)
    say(f"trained in {time.perf_counter() - start:.0f} s; wrote {args.out}")
    return code


COMMANDS = {
    "train-classifier": ("train a noise-conditional classifier for classifier guidance", _add_train_classifier,
                         _run_train_classifier),
    "train-autoencoder": ("train a KL autoencoder (with an optional PatchGAN) for latent diffusion",
                          _add_train_autoencoder, _run_train_autoencoder),
}
