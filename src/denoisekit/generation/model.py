"""A loaded model: everything generating from a trained denoiser needs, in one bundle.

A :class:`LoadedModel` holds the denoiser (with its process), what its condition is, the decoder of a
latent model (Rombach et al. 2022: the denoiser makes latents, the decoder images), the shape of what the
denoiser makes, the run's class names and caption examples and its default sample settings. Build one
with :func:`denoisekit.train.run.load_model` from a run directory, from a live network (the trainer's
previews), or by hand around any denoiser::

    model = LoadedModel(Denoiser(net, get_process("ddpm"), "eps"), image_shape=(1, 28, 28))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..models.autoencoder import Autoencoder
from ..process import Process
from ..samplers.run import DEFAULT_NFE, DEFAULT_SAMPLER, DEFAULT_SCHEDULE

#: Condition kinds trained with condition dropout, so that classifier-free guidance applies (Ho & Salimans 2022).
#: The condition schema's kinds will say this of themselves; until then it is said once, here.
GUIDED_KINDS = ("class", "text")


class SampleSettings(Protocol):
    """A run's default sampling settings: its config's ``sample`` section (``SampleConfig``), or
    :class:`SampleDefaults`."""

    sampler: str
    nfe: int
    schedule: str
    cfg_scale: float
    seed: int


@dataclass(frozen=True)
class SampleDefaults:
    """Sample settings for a model that has no run (the defaults of :func:`~denoisekit.samplers.run.sample`)."""

    sampler: str = DEFAULT_SAMPLER
    nfe: int = DEFAULT_NFE
    schedule: str = DEFAULT_SCHEDULE
    cfg_scale: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class TrainedSteps:
    """The steps a few-step student was trained to take: ``sampler`` on the decreasing grid ``sigmas`` (ending
    at 0), ``method`` naming how (``progressive``). Its step count is ``len(sigmas) - 1``."""

    method: str
    sampler: str
    sigmas: Tensor

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass(frozen=True)
class LoadedModel:
    """A denoiser and what generating from it needs (module docstring).

    - ``denoiser``: ``(y, sigma, cond) -> x0`` in the VE frame, carrying its ``process``;
    - ``image_shape``: ``(C, H, W)`` of what the denoiser makes (latents, for a latent model);
    - ``condition``: the run's condition kind (``.kind``, its options), None for an unconditional model;
    - ``decoder``: the autoencoder whose :meth:`~denoisekit.models.autoencoder.Autoencoder.decode_latents`
      turns samples into images (latent models), else None;
    - ``classes``, ``captions``: the dataset's class names and example prompts (may be empty);
    - ``num_classes``: a class model's label count, also its null label (the one dropout trains);
    - ``defaults``: the run's sample settings, what :func:`~denoisekit.generation.generate` uses for the
      arguments it is not given (default :class:`SampleDefaults`);
    - ``name``, ``sha256``: where it came from and the hash of its weights (None when unknown);
    - ``base_sha256``: the hash of its weights before any adapter (LoRA, embedding, control module) was loaded,
      what a further adapter made for the base is checked against (None: ``sha256``);
    - ``config``: the run's full config, when it came from a run;
    - ``trained_steps``: a few-step student's own grid and sampler (:class:`TrainedSteps`: progressive
      distillation trains its network for exactly those steps), which :func:`~denoisekit.generation.generate`
      samples on and holds the caller to; None for every other model.
    """

    denoiser: DenoiserFn
    image_shape: tuple[int, ...]
    condition: Any = None
    decoder: Autoencoder | None = None
    classes: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()
    num_classes: int | None = None
    defaults: SampleSettings = SampleDefaults()
    name: str = ""
    sha256: str | None = None
    base_sha256: str | None = None
    config: Any = None
    trained_steps: TrainedSteps | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "captions", tuple(self.captions))
        if getattr(self.denoiser, "process", None) is None:
            raise ValueError("a LoadedModel needs a denoiser with a process: wrap the network as "
                             "Denoiser(net, process, prediction)")

    @property
    def process(self) -> Process:
        return self.denoiser.process

    @property
    def kind(self) -> str:
        """The condition kind: ``none``, ``class``, ``text``, ``image``, ..."""
        return str(getattr(self.condition, "kind", "none"))

    @property
    def null_label(self) -> int | None:
        """The label classifier-free guidance drops class labels to (``num_classes``)."""
        return self.num_classes

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance applies (the condition was dropped in training)."""
        guidable = getattr(self.condition, "guidable", None)  # a kind of denoisekit.conditioning says so itself
        return bool(guidable) if guidable is not None else self.kind in GUIDED_KINDS

    @property
    def device(self) -> torch.device:
        """Where the denoiser's parameters are (CPU for a parameter-free denoiser)."""
        params = getattr(self.denoiser, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def decode(autoencoder: Autoencoder, z: Tensor, *, batch_size: int = 256) -> Tensor:
    """Images ``(B, C, H, W)`` in ``[-1, 1]`` from scaled latents ``(B, latent_channels, h, w)``
    (``D(z / scale_factor + shift)``, LDM Sec. 4.3.2), decoded in batches on the autoencoder's device."""
    if len(z) == 0:
        raise ValueError("decode: no latents given")
    p = next(autoencoder.parameters())
    return torch.cat([autoencoder.decode_latents(part.to(p.device, p.dtype)).clamp(-1, 1).to(z.device)
                      for part in z.split(batch_size)])
