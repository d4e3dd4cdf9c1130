"""denoisekit: train, sample, guide and evaluate diffusion and flow models.

The core: a :class:`~denoisekit.process.Process` gives ``alpha(t), sigma(t)``; a
:class:`~denoisekit.prediction.Denoiser` turns any network into ``denoiser(y, sigma, cond) -> x0``
in the VE frame; samplers in :mod:`denoisekit.samplers` are pure functions of that denoiser and a
decreasing grid of noise levels from :mod:`denoisekit.schedules`.
"""

from .oracle import GaussianMixture
from .prediction import PREDICTIONS, Denoiser
from .process import PROCESSES, Process, get_process
from .samplers import SAMPLERS, get_sampler
from .schedules import SCHEDULES, get_sigmas

__version__ = "0.1.0"

__all__ = ["Denoiser", "GaussianMixture", "PREDICTIONS", "PROCESSES", "Process", "SAMPLERS", "SCHEDULES",
           "get_process", "get_sampler", "get_sigmas"]
