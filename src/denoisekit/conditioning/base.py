"""What a condition kind is: the base every kind of :data:`~denoisekit.conditioning.CONDITIONS` derives from.

A kind owns everything a run needs to know about one way of conditioning a model:

==================  ==========================================================================
``Config``          its options (the ``condition`` section's keys beside ``kind`` and ``dropout``)
``fields``          the dataset item fields it reads (:func:`collate` batches them)
``keys``            the condition keys (:mod:`denoisekit.condition`) its ``cond`` has
``check_run``       its checks of the run config (``model.num_classes``, ``model.context_dim``, ...)
``wrap_network``    the network wrapper it needs (text: :class:`~denoisekit.models.text.TextConditioned`)
``check_data``      its checks of the dataset (fields present, classes, shapes)
``check_model``     its checks of the network's inputs (``model.concat_channels``)
``training``        a batch's ``cond`` with dropout for classifier-free guidance
``preview``         the condition of the trainer's sample grid (rows of classes, prompts, inputs)
==================  ==========================================================================

Dropout draws one uniform number per sample from that sample's generator (the same stream as its
noise), so a step's maths is independent of batch size, process count and resumption.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Preview:
    """A sample grid: ``n`` samples in rows of ``nrow``, their ``cond``, image rows shown ``before`` and
    ``after`` the samples (an image-conditioned model's inputs and the originals), and ``row_labels``: one
    per row of :meth:`rows` (class names, prompts, ``input``/``sample``/``original``), or none."""

    n: int
    nrow: int
    cond: Any = None
    before: tuple[Tensor, ...] = ()
    after: tuple[Tensor, ...] = ()
    row_labels: tuple[str, ...] = ()

    def grid(self, samples: Tensor) -> Tensor:
        """The images of the grid: the ``before`` rows, the samples, the ``after`` rows."""
        if not self.before and not self.after:
            return samples
        return torch.cat([*self.before, samples, *self.after])

    def rows(self, samples: Tensor) -> list[Tensor]:
        """:meth:`grid` cut into its rows of ``nrow`` images."""
        x = self.grid(samples)
        return [x[i:i + self.nrow] for i in range(0, len(x), self.nrow)]


class ConditionKind:
    """A way of conditioning a model (see the module docstring); the base does nothing (no condition)."""

    kind: ClassVar[str] = "none"
    fields: ClassVar[tuple[str, ...]] = ()
    keys: ClassVar[tuple[str, ...]] = ()
    #: Dropout replaces the condition by its null, so classifier-free guidance applies.
    guidable: ClassVar[bool] = False
    #: Read through cross-attention: ``model.context_dim`` is this kind's width.
    cross_attention: ClassVar[bool] = False
    #: Takes prompts (``sample.prompts``).
    prompts: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Any = None, *, dropout: float = 0.0, num_classes: int | None = None,
                 image_shape: Sequence[int] = ()):
        self.config, self.dropout, self.num_classes = config or self.Config(), dropout, num_classes
        self.image_shape = tuple(image_shape)

    # ------------------------------------------------------------------------------------------ run config

    @classmethod
    def check_run(cls, options: Any, run: Any) -> None:
        """``ValueError`` when the run config (a :class:`~denoisekit.train.config.Config`) does not fit this
        kind with ``options`` (its ``Config``)."""

    @classmethod
    def wrap_network(cls, net: nn.Module, options: Any) -> nn.Module:
        """The network this kind trains: ``net``, or a wrapper that turns its ``cond`` into network keys."""
        return net

    # ------------------------------------------------------------------------------------------ data, model

    def check_data(self, dataset: Any, item: Mapping[str, Any], run: Any) -> None:
        """``ValueError`` unless the dataset (first ``item``) yields what this kind reads."""
        for needs in self.fields:
            if not isinstance(item.get(needs), (int, str, Tensor, np.integer)):
                raise ValueError(f"condition.kind is {self.kind!r} but dataset {run.data.name!r} yields no "
                                 f"{needs!r} (its items have {', '.join(sorted(item))})")

    def check_model(self, run: Any) -> None:
        """``ValueError`` when the network's inputs do not fit this kind (before the trial forward pass)."""

    # ------------------------------------------------------------------------------------------ conditions

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Any:
        """The ``cond`` of a collated training batch, with dropout drawn from the per-sample ``gens``."""
        return None

    def items_preview(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Preview:
        """One sample per dataset item of ``batch``, conditioned on that item (no dropout)."""
        n = len(batch["image"])
        return Preview(n, n)

    def preview(self, n: int, dataset: Any, device: Any, *, seed: int = 0, prompts: Sequence[str] = ()) -> Preview:
        """The trainer's sample grid of about ``n`` samples (``seed`` for any random input degradation)."""
        return Preview(n, math.ceil(math.sqrt(n)))

    def _dropped(self, gens: Sequence[torch.Generator]) -> Tensor:
        # One draw per sample, even with dropout 0: the noise stream after it is then the same either way.
        return torch.stack([torch.rand((), generator=g) for g in gens]) < self.dropout


class NoCondition(ConditionKind):
    """Unconditional training."""


def preview_items(dataset: Any, n: int) -> list[Mapping[str, Any]]:
    """The first ``round(sqrt(n))`` (at least one, at most all) dataset items: the rows of a preview."""
    return [dataset[i] for i in range(min(max(1, round(math.sqrt(n))), len(dataset)))]


def collate(items: Sequence[Mapping[str, Any]], fields: Sequence[str] = ()) -> dict[str, Any]:
    """Batch ``image`` and the ``fields`` a condition needs (labels stacked, captions and embeddings as
    lists); other item fields (masks, ...) are neither collated nor required to have equal shapes."""
    out: dict[str, Any] = {"image": torch.stack([torch.as_tensor(it["image"]) for it in items])}
    for name in fields:
        if any(it.get(name) is None for it in items):
            raise ValueError(f"the run's condition needs a {name!r} in every dataset item; one has none")
        values = [it[name] for it in items]
        out[name] = torch.tensor([int(v) for v in values], dtype=torch.long) if name == "label" else values
    return out
