"""The denoiser contract, and the base class of every denoiser wrapper.

A denoiser is ``denoiser(y (B, ...), sigma (B,), cond) -> x0_hat (B, ...)`` in the VE frame
``y = x / alpha``, ``sigma = sigma_native / alpha`` (Karras et al. 2022, Sec. 2: there every process has
the same probability-flow ODE), and it carries the ``process`` it was trained on: samplers need only the
call, while what draws the prior or picks a grid (``sample``, schedule and solver tuning) reads
``denoiser.process``. :class:`~denoisekit.prediction.Denoiser` makes a network a denoiser; guidance and
conditioning take a denoiser and return one, and :class:`DenoiserWrapper` is their base: it holds the
wrapped denoiser as ``inner`` and forwards its ``process``, so a wrapper of a wrapper still has it::

    class Scaled(DenoiserWrapper):
        def forward(self, y, sigma, cond=None):
            return 0.5 * self.inner(y, sigma, cond)
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from .process import Process


class DenoiserFn(Protocol):
    """The contract: ``(y (B, ...), sigma (B,), cond) -> x0_hat (B, ...)`` in the VE frame, and its process."""

    process: Process

    def __call__(self, y: Tensor, sigma: Tensor, cond: Any = None) -> Tensor: ...


class DenoiserWrapper(nn.Module):
    """Base of a denoiser that wraps a denoiser ``inner``: it forwards ``inner``'s :attr:`process`.

    Subclasses call ``super().__init__(inner)`` first and define ``forward(y, sigma, cond=None)``. An
    ``inner`` without a process is a ``ValueError`` here, not an ``AttributeError`` at sampling time;
    ``require_process=False`` is for wrappers whose maths needs no process, so that they also wrap
    bare callables such as the exact oracle (:attr:`process` is then ``None`` for those).
    """

    def __init__(self, inner: DenoiserFn, *, require_process: bool = True):
        super().__init__()
        if not callable(inner):
            raise TypeError(f"{type(self).__name__} wraps a denoiser (y, sigma, cond) -> x0, "
                             f"got {type(inner).__name__}")
        if require_process and getattr(inner, "process", None) is None:
            raise ValueError(f"{type(self).__name__} needs a denoiser with a process; {type(inner).__name__} has "
                             f"none: wrap the network as Denoiser(net, process, prediction) first")
        self.inner = inner  # an nn.Module is registered as a submodule, so .to() / .eval() reach it

    @property
    def process(self) -> Process | None:
        """The wrapped denoiser's process (through any depth of wrappers)."""
        return getattr(self.inner, "process", None)
