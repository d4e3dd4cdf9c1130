"""Image-to-image conditioning: a degraded copy of the image as extra input channels of the network.

Palette (Saharia et al. 2022, Sec. 2) trains ``f(y, x_t, t)`` with the source image ``y`` concatenated
to the noisy target ``x_t``; Cascaded Diffusion (Ho et al. 2021, Sec. 4.2) trains the super-resolution
stages on noise-augmented low-resolution inputs and tells the network the augmentation level. The
network (``UNet``/``DiT`` with ``concat_channels``) receives ``cond={"concat": (B, K, H, W)}``:

================  ===========================  ====  ===============================================
task              source (what a user gives)   K     concat channels
================  ===========================  ====  ===============================================
colorize          grey ``(B, 1, H, W)``        1     BT.601 luma of the image
super_resolution  low-res ``(B, C, H/f, W/f)``  C+1   upsampled ``x_lr + s eps``; constant channel ``s``
inpaint           ``(image, mask)``: image     C+1   image with missing pixels set to 0; the mask
                  ``(B, C, H, W)``, mask                (1 = missing)
                  ``(B, 1, H, W)`` in {0, 1}
================  ===========================  ====  ===============================================

The image-like part always comes first (``concat[:, :C]``, one channel for colorize). Training draws
``s ~ U[0, aug_max]`` per sample; sampling uses a fixed ``s`` (``aug_sample``, the level CDM tunes
per stage). All randomness is per sample from the caller's generators. :class:`ImageCondition` is the
``image`` condition kind of a run; the degraded image is the task's input, so it has no dropout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .._utils import GeneratorLike, as_batch, check_choice, seeded_generators
from ..data.degrade import (MASK_KINDS, UPSAMPLINGS, MaskKind, Upsampling, augmentation_levels, check_coverage,
                            downsample, grayscale, inpaint_masks, noise_augment, upsample)
from .base import ConditionKind, Preview, collate, preview_items

Task = Literal["colorize", "super_resolution", "inpaint"]
TASKS = ("colorize", "super_resolution", "inpaint")
#: Slack on the [-1, 1] range check of user inputs (rounding, bicubic resizing).
RANGE_TOLERANCE = 1e-3

#: What a source may be: a tensor, or ``(image, mask)`` for inpainting.
Source = Tensor | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ImageConditionConfig:
    """Options of :class:`ImageConditioner`.

    task: what the model learns to invert. factor: super-resolution scale; upsample: how the low-res
    input is brought to full size. aug_max: training augmentation levels ``s ~ U[0, aug_max]``;
    aug_sample: the fixed level at sampling (Ho et al. 2021 sweep it per stage). mask: inpainting
    mask shapes; mask_coverage: ``(low, high)`` fraction of missing pixels.
    """

    task: Task
    factor: int = 2
    upsample: Upsampling = "bicubic"
    aug_max: float = 0.2
    aug_sample: float = 0.05
    mask: MaskKind = "mixed"
    mask_coverage: tuple[float, float] = (0.1, 0.5)

    def __post_init__(self) -> None:
        check_choice("image condition task", self.task, TASKS)
        check_choice("upsampling", self.upsample, UPSAMPLINGS)
        check_choice("mask kind", self.mask, MASK_KINDS)
        if not isinstance(self.factor, int) or isinstance(self.factor, bool) or self.factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {self.factor!r}")
        for name in ("aug_max", "aug_sample"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.mask_coverage, list):  # YAML gives lists; keep the config hashable
            object.__setattr__(self, "mask_coverage", tuple(self.mask_coverage))
        check_coverage(self.mask_coverage, (1000, 1000))


class ImageConditioner:
    """Turns clean images (training) or user inputs (sampling) into ``{"concat": (B, K, H, W)}``."""

    def __init__(self, config: ImageConditionConfig, image_shape: Sequence[int]):
        if len(image_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {tuple(image_shape)}")
        self.config, self.image_shape = config, tuple(image_shape)
        c, h, w = self.image_shape
        if config.task == "colorize" and c != 3:
            raise ValueError(f"colorize needs RGB images (3 channels), got {c} channels")
        if config.task == "super_resolution" and (h % config.factor or w % config.factor):
            raise ValueError(f"super_resolution with factor {config.factor} needs H and W divisible by it, "
                             f"got {h}x{w} images")
        if config.task == "inpaint":
            check_coverage(config.mask_coverage, (h, w))

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def concat_channels(self) -> int:
        """``K``, the network's ``concat_channels``."""
        return 1 if self.task == "colorize" else self.image_shape[0] + 1

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """Shape of one source image (inpainting also takes a ``(1, H, W)`` mask)."""
        c, h, w = self.image_shape
        if self.task == "colorize":
            return (1, h, w)
        if self.task == "super_resolution":
            return (c, h // self.config.factor, w // self.config.factor)
        return (c, h, w)

    # ------------------------------------------------------------------------------------------

    def degrade(self, x0: Tensor, generators: GeneratorLike = None) -> Source:
        """The source a clean ``x0 (B, C, H, W)`` gives: grey, low-res, or ``(masked image, mask)``
        (the mask drawn from the per-sample generators)."""
        self._check(x0, self.image_shape, "clean image")
        if self.task == "colorize":
            return grayscale(x0)
        if self.task == "super_resolution":
            return downsample(x0, self.config.factor)
        mask = inpaint_masks(x0.shape[0], self.image_shape[1:], generators, kind=self.config.mask,
                             coverage=self.config.mask_coverage).to(device=x0.device, dtype=x0.dtype)
        return x0 * (1 - mask), mask

    def training(self, x0: Tensor, generators: GeneratorLike) -> dict[str, Tensor]:
        """``{"concat": ...}`` for a training batch: degrade ``x0`` and, for super-resolution, add noise
        at ``s ~ U[0, aug_max]`` per sample (Ho et al. 2021, Sec. 4.2)."""
        source = self.degrade(x0, generators)
        aug = None
        if self.task == "super_resolution":
            aug = augmentation_levels(generators, x0.shape[0], self.config.aug_max, device=x0.device)
        return self._concat(source, generators, aug)

    def from_source(self, source: Source, generators: GeneratorLike = None,
                    aug: float | Tensor | None = None) -> dict[str, Tensor]:
        """``{"concat": ...}`` from a user's input, checked against :attr:`source_shape`; ``aug``
        (scalar or ``(B,)``, default ``aug_sample``) is the super-resolution augmentation level."""
        source = self.check_source(source)
        if self.task == "super_resolution":
            aug = self.config.aug_sample if aug is None else aug
        elif aug is not None:
            raise ValueError(f"aug is the super-resolution augmentation level; task {self.task!r} takes none")
        return self._concat(source, generators, aug)

    def shown(self, cond: dict[str, Tensor]) -> Tensor:
        """The input a model saw, as ``(B, C, H, W)`` images: the grey, upsampled or masked part of
        ``cond["concat"]`` (for showing beside the output)."""
        c = self.image_shape[0]
        return cond["concat"][:, :c].expand(-1, c, -1, -1)

    def consistency(self, sample: Tensor, source: Source) -> Tensor:
        """``(B,)`` mean squared disagreement of outputs with their input: grey of the sample vs the grey
        input, the sample downsampled vs the low-res input, or the sample vs the image on known pixels."""
        self._check(sample, self.image_shape, "sample")
        source = self.check_source(source)
        if self.task == "inpaint":
            image, mask = source
            known = (1 - mask).to(sample.dtype)
            err = (known * (sample - image.to(sample.dtype)) ** 2).flatten(1).sum(1)
            return err / (known.flatten(1).sum(1) * sample.shape[1]).clamp(min=1)
        assert isinstance(source, Tensor)
        seen = grayscale(sample) if self.task == "colorize" else downsample(sample, self.config.factor)
        return (seen - source.to(sample.dtype)).pow(2).flatten(1).mean(1)

    # ------------------------------------------------------------------------------------------

    def check_source(self, source: Any) -> Source:
        """Validate a source (shape, channels, range; mask values); raise ``ValueError`` saying what
        was expected and what was given."""
        if self.task != "inpaint":
            if not isinstance(source, Tensor):
                raise ValueError(f"{self._what()} expects a tensor, got {type(source).__name__}")
            self._check(source, self.source_shape, self._source_name())
            return source
        if not (isinstance(source, (tuple, list)) and len(source) == 2):
            raise ValueError(f"{self._what()} expects an (image, mask) pair, got {type(source).__name__}")
        image, mask = source
        self._check(image, self.source_shape, "image")
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (image.shape[0], 1, *self.image_shape[1:]):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"{self._what()} expects a ({image.shape[0]}, 1, {self.image_shape[1]}, "
                             f"{self.image_shape[2]}) mask (1 = missing), got {got}")
        mask = mask.to(image.dtype)
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("inpainting mask values must be 0 (known) or 1 (missing)")
        return image, mask

    def _concat(self, source: Source, generators: GeneratorLike, aug: float | Tensor | None) -> dict[str, Tensor]:
        if self.task == "colorize":
            assert isinstance(source, Tensor)
            return {"concat": source}
        if self.task == "inpaint":
            image, mask = source
            return {"concat": torch.cat([image * (1 - mask), mask], dim=1)}
        assert isinstance(source, Tensor) and aug is not None
        level = as_batch(aug, source)
        if (level < 0).any():
            raise ValueError(f"augmentation level must be >= 0, got {level.min().item()}")
        noisy = noise_augment(source, level, generators)
        up = upsample(noisy, self.config.factor, self.config.upsample)
        level_map = level.to(up.dtype).view(-1, 1, 1, 1).expand(-1, 1, *up.shape[2:])
        return {"concat": torch.cat([up, level_map], dim=1)}

    def _check(self, x: Any, shape: tuple[int, ...], name: str) -> None:
        want = f"(B, {', '.join(map(str, shape))})"
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{self._what()} expects a float {want} {name} in [-1, 1], got {got}")
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{self._what()} expects a {want} {name}, got {tuple(x.shape)}")
        if x.numel() and not torch.isfinite(x).all():
            raise ValueError(f"{self._what()}: the {name} contains NaN or inf")
        if x.numel() and (x.min() < -1 - RANGE_TOLERANCE or x.max() > 1 + RANGE_TOLERANCE):
            raise ValueError(f"{self._what()} expects a {name} with values in [-1, 1], got "
                             f"[{x.min().item():.4g}, {x.max().item():.4g}] (map [0, 1] images with 2x - 1)")

    def _what(self) -> str:
        _, h, w = self.image_shape
        if self.task == "super_resolution":
            return f"super_resolution with factor {self.config.factor} on {h}x{w} images"
        return f"{self.task} on {h}x{w} images"

    def _source_name(self) -> str:
        return {"colorize": "grey", "super_resolution": "low-resolution"}.get(self.task, "image") + " input"


class ImageCondition(ConditionKind):
    """An image derived from the clean one (grey, low resolution, masked) concatenated to the network's
    input: Palette (Saharia et al. 2022), through :class:`ImageConditioner`."""

    kind = "image"
    keys = ("concat",)
    Config = ImageConditionConfig  # the task's own options

    def __init__(self, config: Any = None, *, dropout: float = 0.0, num_classes: int | None = None,
                 image_shape: Sequence[int] = ()):
        super().__init__(config, dropout=dropout, num_classes=num_classes, image_shape=image_shape)
        self.conditioner = ImageConditioner(self.config, self.image_shape) if self.image_shape else None

    @classmethod
    def check_run(cls, options: Any, run: Any) -> None:
        if run.latent.autoencoder is not None:
            raise ValueError("latent.autoencoder does not support condition.kind: image (its degraded inputs are "
                             "images, not latents); use pixel space (latent.autoencoder: null)")

    def check_model(self, run: Any) -> None:
        assert self.conditioner is not None
        want, got = self.conditioner.concat_channels, run.model.options.get("concat_channels", 0)
        if got != want:
            raise ValueError(f"model.concat_channels must be {want} for condition task {self.config.task!r} on "
                             f"{self.image_shape[0]}-channel images, got {got}")

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> dict[str, Any]:
        assert self.conditioner is not None
        cond = self.conditioner.training(batch["image"].to(device, torch.float32), gens)
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in cond.items()}

    def items_preview(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Preview:
        """Each item degraded (with the per-sample ``gens``) as the model's input; rows: what the model saw,
        what it made, the original."""
        assert self.conditioner is not None
        x0 = batch["image"].float().to(device)
        cond = self.conditioner.from_source(self.conditioner.degrade(x0, gens), gens)
        return Preview(len(x0), len(x0), cond, before=(self.conditioner.shown(cond),), after=(x0,),
                       row_labels=("input", "sample", "original"))

    def preview(self, n: int, dataset: Any, device: Any, *, seed: int = 0, prompts: Sequence[str] = ()) -> Preview:
        items = preview_items(dataset, n)
        return self.items_preview(collate(items), seeded_generators(seed, len(items)), device)
