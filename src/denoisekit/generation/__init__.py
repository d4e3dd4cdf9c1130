"""The generation core: a loaded model (:class:`LoadedModel`) and :func:`generate`, the one way images are
made from it (the CLI, the trainer's previews, the benchmarks and every pipeline call it)."""

from .generate import Guidance, default_guidance, generate, guided_denoiser, sampling_grid, truncate_sigmas
from .model import LoadedModel, SampleDefaults, SampleSettings, TrainedSteps, decode

__all__ = ["Guidance", "LoadedModel", "SampleDefaults", "SampleSettings", "TrainedSteps", "decode", "default_guidance", "generate", "guided_denoiser",
           "sampling_grid", "truncate_sigmas"]
