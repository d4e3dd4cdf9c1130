"""Class labels: ``label`` -> ``cond`` labels ``(B,)``, dropped to the null label ``num_classes`` (Ho & Salimans
2022, classifier-free guidance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import ConditionKind, Preview


class ClassCondition(ConditionKind):
    """Class labels ``0..num_classes-1``; dropped to the null label ``num_classes`` (Ho & Salimans 2022)."""

    kind = "class"
    fields = ("label",)
    keys = ("labels",)
    guidable = True

    @classmethod
    def check_run(cls, options: Any, run: Any) -> None:
        if run.num_classes is None:
            raise ValueError("condition.kind is 'class' but model.num_classes is not set (labels 0..N-1; "
                             "N is the null label of classifier-free guidance)")

    def check_data(self, dataset: Any, item: Mapping[str, Any], run: Any) -> None:
        super().check_data(dataset, item, run)
        classes = getattr(dataset, "classes", None)
        if classes is not None and len(classes) > (run.num_classes or 0):
            raise ValueError(f"dataset {run.data.name!r} has {len(classes)} classes but model.num_classes is "
                             f"{run.num_classes}")

    def labels(self, values: Any) -> Tensor:
        n = self.num_classes
        assert n is not None
        labels = torch.as_tensor(values).long().reshape(-1)
        bad = (labels < 0) | (labels >= n)
        if bad.any():
            raise ValueError(f"dataset label {labels[bad][0].item()} outside 0..{n - 1} (model.num_classes={n})")
        return labels

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Tensor:
        labels = self.labels(batch["label"])
        if self.dropout > 0:
            labels = torch.where(self._dropped(gens), torch.full_like(labels, self.num_classes), labels)
        return labels.to(device)

    def items_preview(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Preview:
        labels = self.labels(batch["label"]).to(device)
        return Preview(len(labels), len(labels), {"labels": labels})

    def preview(self, n: int, dataset: Any, device: Any, *, seed: int = 0, prompts: Sequence[str] = ()) -> Preview:
        """One row per class."""
        assert self.num_classes is not None
        nrow = max(1, n // self.num_classes)
        names = [str(c) for c in getattr(dataset, "classes", None) or ()]
        labels = tuple(names[c] if c < len(names) else f"class {c}" for c in range(self.num_classes))
        return Preview(nrow * self.num_classes, nrow,
                       torch.arange(self.num_classes, device=device).repeat_interleave(nrow), row_labels=labels)
