"""What every subcommand shares: the one-line error for bad input, argument types, thread control."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import torch

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


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, restoring the previous count (``main`` may run in-process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
