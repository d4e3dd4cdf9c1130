"""Class-, text- and unconditional generation from a loaded model with a user's inputs.

``labels`` (one class for every image, or ``"all"``: one grid row per class), ``prompts`` (one row per
prompt; default the run's ``sample.prompts``) and a ``negative_prompt`` (Ho & Salimans 2022's
unconditional branch replaced by a prompt to steer away from) become the per-image condition and the
:class:`~denoisekit.generation.Guidance` of :func:`~denoisekit.generation.generate`::

    model = load_model("runs/digits")
    out = generate_images(model, 100, labels="all", cfg_scale=2)   # out.images (100, 1, 8, 8), 10 per row
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    ``per_row``: images per grid row (one row per class or prompt)."""

    images: Tensor
    labels: Tensor | None
    prompts: list[str] | None
    per_row: int


def class_labels(labels: Labels, n: int, num_classes: int) -> tuple[Tensor, int]:
    """Per-image labels and images per row: ``"all"``/None spreads ``n`` over the classes (``n // K`` each,
    one row per class), an int labels every image, a sequence is taken as it is. Labels out of range raise."""
    if labels is None or (isinstance(labels, str) and labels == "all"):
        per_class = max(1, n // num_classes)
        return torch.arange(num_classes).repeat_interleave(per_class), per_class
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
    """The per-image condition of about ``n`` images and the images per grid row, from a user's labels or
    prompts (see :func:`class_labels`; ``n // len(prompts)`` per prompt; a model conditioned on both gets
    the labels spread over the prompts' rows). ``num_labels``: the classes labels range over when the model
    itself has none (classifier guidance of an unconditional model)."""
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
                    classifier_scale: float = 1.0, num_labels: int | None = None, **options: Any) -> Generated:
    """About ``n`` images of ``model`` for the user's inputs (module docstring); ``cfg_*``: classifier-free
    guidance (default the run's scale), ``classifier``: classifier guidance toward the labels. ``options``
    go to :func:`~denoisekit.generation.generate` (sampler, nfe, schedule, solver, seed, batch_size, ...)."""
    cond, per_row = user_condition(model, n, labels=labels, prompts=prompts, num_labels=num_labels)
    if (cfg_scale not in (None, 1) or cfg_rescale != 0 or cfg_interval is not None) and not model.guided:
        raise ValueError(f"classifier-free guidance needs a class- or text-conditional model (condition.kind: "
                         f"{model.kind})")
    if negative_prompt is not None and "text" not in condition_keys(model.condition):
        raise ValueError("a negative prompt needs a text-conditional model")
    scale = default_guidance(model).cfg_scale if cfg_scale is None else cfg_scale
    guidance = Guidance(cfg_scale=scale, rescale=cfg_rescale, interval=cfg_interval,
                        negative=None if negative_prompt is None else {"text": [negative_prompt]},
                        classifier=classifier, classifier_scale=classifier_scale)
    count = n if cond is None else len(cond["text"] if isinstance(cond, dict) else cond)
    images = generate(model, count, cond, guidance=guidance, **options)
    labels_out = cond.get("labels") if isinstance(cond, dict) else cond
    return Generated(images, labels_out, list(cond["text"]) if isinstance(cond, dict) else None, per_row)
