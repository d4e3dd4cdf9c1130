"""Class-, text- and unconditional generation from a loaded model with a user's inputs.

``labels`` (one class for every image, or ``"all"``: image ``i`` has class ``i mod K``, one grid row per
class), ``prompts`` (one row per prompt; default the run's ``sample.prompts``) and a ``negative_prompt``
(Ho & Salimans 2022's unconditional branch replaced by a prompt to steer away from) become the per-image
condition and the :class:`~denoisekit.generation.Guidance` of :func:`~denoisekit.generation.generate`::

    model = load_model("runs/digits")
    out = generate_images(model, 100, labels="all", cfg_scale=2)   # out.images (100, 1, 8, 8), labels i % 10
    out.save("grid.png")                                           # one labelled row per class

:meth:`Generated.save` is the one way generated images are written (a labelled grid, an npz, or one PNG per
image); :func:`resolve_label` reads a user's label (an index, ``"all"`` or a stored class name).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..conditioning import condition_keys
from ..generation import Guidance, LoadedModel, default_guidance, generate
from ..guidance import Classifier

Labels = int | str | Sequence[int] | Tensor | None


@dataclass(frozen=True)
class Generated:
    """Images ``(N, C, H, W)`` (decoded, not clamped), their ``labels`` ``(N,)`` or ``prompts`` (N) if any, and
    ``per_row``: images per grid row (one row per class or prompt); ``by_class``: labels cycle over the
    classes (``"all"``), so :meth:`grid` gathers each class into its row; ``class_names``: the model's, for
    the grid's row labels."""

    images: Tensor
    labels: Tensor | None
    prompts: list[str] | None
    per_row: int
    by_class: bool = False
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def groups(self) -> tuple[list[Tensor], list[str] | None]:
        """The images as labelled grid groups: one per prompt, or per class (sorted) when there are several,
        else one group (labelled with its class when there is one)."""
        x, labels = self.images, self.labels
        if self.prompts is not None:
            k = self.per_row
            return [x[i:i + k] for i in range(0, len(x), k)], self.prompts[::k]
        if labels is None:
            return [x], None
        classes = [int(c) for c in dict.fromkeys(labels.tolist())]  # in order of first appearance
        if len(classes) == 1:
            return [x], [self.class_name(classes[0])]
        classes.sort()
        return [x[labels == c] for c in classes], [self.class_name(c) for c in classes]

    def class_name(self, c: int) -> str:
        return self.class_names[c] if c < len(self.class_names) else f"class {c}"

    def save(self, path: str | os.PathLike[str], parameters: Sequence[str] | None = None) -> Path:
        """Write the images: ``.png`` a labelled grid (:meth:`groups`), ``.npz`` uint8 ``images`` ``(N, H, W, C)``
        with ``labels`` (-1 without) and ``prompts`` if any, a directory (a name ending in ``/`` or an existing
        directory) one PNG per image. ``parameters``: each image's generation parameters
        (:func:`~denoisekit.pipelines.png_info.generation_parameters`), in each PNG's info (a grid: the first
        image's). Returns the path written."""
        from ..eval.plotting import grid_image
        from .output import check_output, is_directory, save_each, save_npz
        from .png_info import save_png_with_info

        out = check_output(path)
        if not torch.isfinite(self.images).all():
            raise FloatingPointError("samples contain NaN or inf")
        out.parent.mkdir(parents=True, exist_ok=True)
        if is_directory(path):
            save_each(self.images, out, parameters)
        elif out.suffix.lower() == ".png":
            groups, labels = self.groups()
            save_png_with_info(grid_image(groups, labels=labels), out, parameters[0] if parameters else None)
        else:
            labels = self.labels if self.labels is not None else torch.full((len(self),), -1)
            extra = {"prompts": self.prompts} if self.prompts is not None else {}
            save_npz(out, images=self.images, labels=labels.long(), **extra)
        return out

    def grid(self) -> Tensor:
        """The images in grid order, ``per_row`` per row: as generated, or with ``by_class`` row ``c`` holding
        class ``c``'s images in order, a row one short filled with a blank (white) cell."""
        if not self.by_class or self.labels is None:
            return self.images
        blank = torch.ones_like(self.images[:1])
        rows = [self.images[self.labels == c] for c in range(int(self.labels.max()) + 1)]
        return torch.cat([torch.cat([r, blank.expand(self.per_row - len(r), *r.shape[1:])]) for r in rows])


def resolve_label(value: Labels, classes: Sequence[str], num_classes: int | None) -> Labels:
    """A user's label: None, ``"all"``, a class index (or its digits as text), a class name stored in the run
    (exact, else ignoring case), or anything :func:`class_labels` takes; another string is a ``ValueError``
    listing the classes. Non-class models pass it on (:func:`user_condition` says what is wrong)."""
    if not isinstance(value, str) or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        pass
    names = list(classes)
    for match in (lambda c: c == value, lambda c: c.lower() == value.strip().lower()):
        found = [i for i, c in enumerate(names) if match(c)]
        if found:
            return found[0]
    if num_classes is None:
        return value
    listed = (f"; its classes: {', '.join(f'{i} {c}' for i, c in enumerate(names))}" if names and num_classes <= 100
              else "" if names else " (this run stores no class names)")
    raise ValueError(f"label {value!r}: labels must be an integer in 0..{num_classes - 1}, 'all', or a class "
                     f"name{listed}")


def class_labels(labels: Labels, n: int, num_classes: int) -> tuple[Tensor, int]:
    """Per-image labels and images per row: ``"all"``/None gives image ``i`` class ``i mod K`` (so image ``i``
    does not depend on ``n``; ``ceil(n / K)`` per row, one row per class in :meth:`Generated.grid`), an int
    labels every image, a sequence is taken as it is. Labels out of range raise."""
    if labels is None or (isinstance(labels, str) and labels == "all"):
        return torch.arange(n) % num_classes, -(-n // num_classes)
    if isinstance(labels, str):
        raise ValueError(f"labels must be an integer in 0..{num_classes - 1} or 'all', got {labels!r}")
    out = torch.as_tensor([labels] if isinstance(labels, int) else labels).long().reshape(-1)
    bad = out[(out < 0) | (out >= num_classes)]
    if len(bad):
        raise ValueError(f"label {int(bad[0])} is out of range: this model has classes 0..{num_classes - 1}")
    out = out.expand(n).clone() if isinstance(labels, int) else out
    return out, max(1, math.ceil(math.sqrt(len(out))))


def user_condition(model: LoadedModel, n: int, *, labels: Labels = None, prompts: Sequence[str] | None = None,
                   num_labels: int | None = None) -> tuple[Any, int]:
    """The per-image condition of ``n`` images and the images per grid row, from a user's labels or prompts
    (see :func:`class_labels`; with prompts ``n // len(prompts)`` per prompt, so at most ``n``; a model
    conditioned on both gets the labels spread over the prompts' rows). ``num_labels``: the classes labels
    range over when the model itself has none (classifier guidance of an unconditional model)."""
    text = "text" in condition_keys(model.condition)
    classes = model.num_classes if num_labels is None else num_labels
    if not text:
        if prompts:
            raise ValueError(f"prompts given, but this model is not text-conditional (condition.kind: {model.kind})")
        if classes is None:
            if labels is not None:
                raise ValueError("labels given, but this model is not class-conditional")
            return None, max(1, math.ceil(math.sqrt(n)))
        return class_labels(labels, n, classes)
    prompts = list(prompts or model.captions)
    if not prompts:
        raise ValueError("this model is text-conditional: give prompts")
    per_row = max(1, n // len(prompts))
    cond: dict[str, Any] = {"text": [p for p in prompts for _ in range(per_row)]}
    if classes is not None and "labels" in condition_keys(model.condition):  # class + text
        rows = len(cond["text"])
        cond["labels"] = (torch.arange(rows) % classes if labels is None or labels == "all"
                          else class_labels(labels, rows, classes)[0])
    elif labels is not None:
        raise ValueError("labels given, but this model is text-conditional (use prompts)")
    return cond, per_row


def generate_images(model: LoadedModel, n: int, *, labels: Labels = None, prompts: Sequence[str] | None = None,
                    negative_prompt: str | None = None, cfg_scale: float | None = None, cfg_rescale: float = 0.0,
                    cfg_interval: tuple[float, float] | None = None, classifier: Classifier | None = None,
                    classifier_scale: float = 1.0, num_labels: int | None = None, clip: Any = None,
                    clip_scale: float = 0.0, **options: Any) -> Generated:
    """``n`` images of ``model`` for the user's inputs (with prompts: ``n // len(prompts)`` per prompt; module
    docstring); ``cfg_*``: classifier-free guidance (default the run's scale, >= 0), ``classifier``:
    classifier guidance toward the labels, ``clip`` (a CLIP energy, :class:`~denoisekit.eval.clip.CLIPEnergy`) at
    ``clip_scale``: CLIP guidance toward the prompts (a text model). ``options`` go to :func:`~denoisekit.generation.generate`
    (sampler, nfe, schedule, solver, seed, batch_size, ...)."""
    if cfg_scale is not None and not cfg_scale >= 0:
        raise ValueError(f"the guidance scale must be >= 0 (1 = no guidance), got {cfg_scale!r}")
    labels = resolve_label(labels, model.classes, model.num_classes if num_labels is None else num_labels)
    cond, per_row = user_condition(model, n, labels=labels, prompts=prompts, num_labels=num_labels)
    if (cfg_scale not in (None, 1) or cfg_rescale != 0 or cfg_interval is not None) and not model.guided:
        raise ValueError(f"classifier-free guidance needs a class- or text-conditional model (condition.kind: "
                         f"{model.kind})")
    if negative_prompt is not None and "text" not in condition_keys(model.condition):
        raise ValueError("a negative prompt needs a text-conditional model")
    scale = default_guidance(model).cfg_scale if cfg_scale is None else cfg_scale
    guidance = Guidance(cfg_scale=scale, rescale=cfg_rescale, interval=cfg_interval,
                        negative=None if negative_prompt is None else {"text": [negative_prompt]},
                        classifier=classifier, classifier_scale=classifier_scale, clip=clip, clip_scale=clip_scale)
    if clip is not None and clip_scale != 0 and not isinstance(cond, dict):
        raise ValueError(f"CLIP guidance steers toward prompts: it needs a text-conditional model (condition.kind: "
                         f"{model.kind})")
    count = n if cond is None else len(cond["text"] if isinstance(cond, dict) else cond)
    images = generate(model, count, cond, guidance=guidance, **options)
    labels_out = cond.get("labels") if isinstance(cond, dict) else cond
    by_class = isinstance(cond, Tensor) and (labels is None or (isinstance(labels, str) and labels == "all"))
    return Generated(images, labels_out, list(cond["text"]) if isinstance(cond, dict) else None, per_row, by_class,
                     model.classes)
