"""The training data stream: a seeded, resumable, process-sharded order of dataset indices.

Every random draw of a training step is a function of ``(seed, tag, index)`` through
:func:`stream_seeds`, so one process and N processes see the same samples in the same order, and a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

# stream tags: "data", "nois", "load", "drop"
_DATA, NOISE_STREAM, LOADER_STREAM, DROPOUT_STREAM = 0x64617461, 0x6E6F6973, 0x6C6F6164, 0x64726F70
_SAMPLE_GENERATORS: ContextVar[list[torch.Generator] | None] = ContextVar("sample_generators", default=None)


def stream_seeds(seed: int, tag: int, index: int, count: int = 1) -> np.ndarray:
    """``count`` independent 64-bit seeds for ``(seed, tag, index)`` (numpy's SeedSequence hashing)."""
    return np.random.SeedSequence([seed, tag, index]).generate_state(count, np.uint64)


class StreamSampler(Sampler):
    """This process's share of the endless index stream ``perm_0 ++ perm_1 ++ ...`` from ``start``.

    ``perm_e`` is a permutation of ``range(n)`` seeded by ``(seed, e)``. The stream is consumed in
    global micro-batches of ``chunk`` indices; process ``rank`` of ``world`` takes the ``rank``-th
    ``chunk / world`` of each, so the global order is independent of the number of processes and a
    run resumes at any position without replaying the data. ``with_epoch`` yields ``(index, epoch)``
    pairs instead, for :class:`EpochIndexed`.
    """

    def __init__(self, n: int, seed: int, start: int, chunk: int, rank: int = 0, world: int = 1, *,
                 with_epoch: bool = False):
        if n < 1 or chunk % world or not 0 <= rank < world:
            raise ValueError(f"bad stream: n={n}, chunk={chunk}, rank={rank}, world={world}")
        self.n, self.seed, self.start, self.chunk, self.rank, self.world = n, seed, start, chunk, rank, world
        self.with_epoch = with_epoch

    def permutation(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(int(stream_seeds(self.seed, _DATA, epoch)[0]))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[Any]:
        per, pos, epoch, perm = self.chunk // self.world, self.start, -1, torch.empty(0, dtype=torch.long)
        while True:
            for p in range(pos + self.rank * per, pos + (self.rank + 1) * per):
                e, i = divmod(p, self.n)
                if e != epoch:
                    epoch, perm = e, self.permutation(e)
                yield (int(perm[i]), e) if self.with_epoch else int(perm[i])
            pos += self.chunk


class EpochIndexed(Dataset):
    """``dataset[(i, epoch)]``: calls ``dataset.set_epoch(epoch)`` when the epoch changes (in whichever
    process loads the item), so per-epoch random augmentations follow the data stream exactly."""

    def __init__(self, dataset: Any):
        self.dataset, self.epoch = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


@contextlib.contextmanager
def sample_randomness(generators: list[torch.Generator]) -> Iterator[None]:
    """Within this block, network layers that draw random numbers per sample (dropout) take sample ``i``'s
    from ``generators[i]`` (the engine's per-sample dropout stream), not from the global RNG."""
    token = _SAMPLE_GENERATORS.set(generators)
    try:
        yield
    finally:
        _SAMPLE_GENERATORS.reset(token)


def sample_generators() -> list[torch.Generator] | None:
    """The per-sample generators of the enclosing :func:`sample_randomness` block, or ``None``."""
    return _SAMPLE_GENERATORS.get()
