"""One call from a denoiser to samples: pick the grid for an NFE budget, draw the prior, run a sampler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._utils import GeneratorLike, lookup, randn
from .prediction import Denoiser
from .samplers import SAMPLERS, get_sampler
from .samplers._common import Callback
from .schedules import check_sigmas, get_sigmas

def nfe_of(sampler: str, steps: int, **options: Any) -> int:
    """Denoiser evaluations ``sampler`` makes on a ``steps``-step grid ending at 0: counted on a
    dummy denoiser, not assumed (Heun takes ``2 steps - 1``, its last step to 0 being Euler)."""
    calls = [0]

    def dummy(y: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        calls[0] += 1
        return torch.zeros_like(y)

    grid = torch.logspace(1, -2, steps, dtype=torch.float64)  # the count does not depend on the levels
    get_sampler(sampler, **options)(dummy, torch.ones(1, 1, dtype=torch.float64), torch.cat([grid, grid.new_zeros(1)]))
    return calls[0]


def steps_for_nfe(sampler: str, nfe: int, **options: Any) -> int:
    """The most steps whose run costs at most ``nfe`` evaluations. Every sampler's cost is affine in
    the step count (a per-step cost, and a cheaper last step to 0), so two counts determine it."""
    lookup("sampler", SAMPLERS, sampler)
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"NFE must be an integer >= 1, got {nfe!r}")
    first = nfe_of(sampler, 1, **options)
    per_step = nfe_of(sampler, 2, **options) - first
    if first > nfe:
        raise ValueError(f"sampler {sampler!r} needs {first} evaluations for a single step; NFE={nfe}")
    return 1 + (nfe - first) // per_step if per_step > 0 else nfe


def sample(denoiser: Denoiser, shape: Sequence[int], *, sampler: str = "dpmpp_2m", nfe: int = 10,
           schedule: str = "log_snr", sigmas: Tensor | None = None, cond: Any = None,
           generator: GeneratorLike = None, callback: Callback | None = None, device: Any = None,
           dtype: torch.dtype = torch.float32, **options: Any) -> Tensor:
    """Draw ``shape`` samples ``(B, ...)``: the process's prior at ``sigmas[0]``, then ``sampler``.

    The default grid is uniform in log-SNR, DPM-Solver's choice: at 10 NFE on DDPM's sigma range it
    gives a 35-40% lower sliced W2 than Karras' (which spends half its steps above sigma = 10).
    ``sigmas`` overrides ``schedule``/``nfe`` (e.g. an optimised grid). ``options`` go to the sampler
    (``eta``, ``s_churn``, ...). Pass a list of ``B`` generators for batch-independent samples.
    """
    fn = get_sampler(sampler, **options)
    process = denoiser.process
    grid = get_sigmas(process, schedule, steps_for_nfe(sampler, nfe, **options)) if sigmas is None else check_sigmas(sigmas)
    x = randn(shape, generator, device=device, dtype=dtype) * float(process.prior_std(grid[0]))
    return fn(denoiser, x, grid, cond=cond, generator=generator, callback=callback)
