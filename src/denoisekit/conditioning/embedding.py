"""Embeddings: per-sample vectors ``(D,)`` or sequences ``(L, D)`` that the dataset supplies in each item's
``embedding`` field, read by the network's cross-attention as context tokens (the conditioning of Rombach et
al. 2022, Sec. 3.3, with the encoder run ahead of time): the way any encoder's output (audio, an image
encoder, another model's embedding) conditions a model.

``cond = {"embedding": (B, D) or (B, L, D)}``; the backbone reads a vector as one token and a sequence as
``L`` tokens (:func:`~denoisekit.models.layers.parse_conditioning`), so ``model.context_dim`` must be ``D``.
Dropout (classifier-free guidance) replaces a sample's embedding by the null embedding: all zeros, the
``embedding`` null of :mod:`denoisekit.condition` (a zero token carries no information; CFG's unconditional
branch gets the same). Datasets: :class:`~denoisekit.data.folder.FolderDataset` reads embeddings from an
``.npz`` keyed by file name or a ``metadata.jsonl`` key; digits can give a fixed random projection of the label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import ConditionKind, Preview, preview_items


class EmbeddingCondition(ConditionKind):
    """Dataset-supplied vectors or token sequences through cross-attention; dropped to zeros."""

    kind = "embedding"
    fields = ("embedding",)
    keys = ("embedding",)
    guidable = True
    cross_attention = True

    @classmethod
    def check_run(cls, options: Any, run: Any) -> None:
        if run.model.options.get("context_dim") is None:
            raise ValueError("condition.kind is 'embedding' but model.context_dim is not set (the width D of the "
                             "dataset's (D,) or (L, D) embeddings, read by cross-attention)")

    def check_data(self, dataset: Any, item: Mapping[str, Any], run: Any) -> None:
        super().check_data(dataset, item, run)
        shape, want = tuple(torch.as_tensor(item["embedding"]).shape), run.model.options.get("context_dim")
        if len(shape) not in (1, 2) or shape[-1] != want or 0 in shape:
            raise ValueError(f"dataset {run.data.name!r} yields embeddings of shape {shape}; condition.kind "
                             f"'embedding' needs (D,) or (L, D) with D = model.context_dim = {want}")

    def embeddings(self, values: Sequence[Any]) -> Tensor:
        """``(B, D)`` or ``(B, L, D)`` float32 from the items' embeddings (all of one shape)."""
        tensors = [torch.as_tensor(v, dtype=torch.float32) for v in values]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"dataset embeddings must all have one shape to be batched, got {sorted(shapes)}")
        return torch.stack(tensors)

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> dict[str, Any]:
        emb = self.embeddings(batch["embedding"])
        if self.dropout > 0:
            dropped = self._dropped(gens).view(-1, *[1] * (emb.ndim - 1))
            emb = torch.where(dropped, torch.zeros_like(emb), emb)
        return {"embedding": emb.to(device)}

    def items_preview(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Preview:
        emb = self.embeddings(batch["embedding"]).to(device)
        return Preview(len(emb), len(emb), {"embedding": emb})

    def preview(self, n: int, dataset: Any, device: Any, *, seed: int = 0, prompts: Sequence[str] = ()) -> Preview:
        """One row per embedding of the first dataset items."""
        emb = self.embeddings([it["embedding"] for it in preview_items(dataset, n)]).to(device)
        nrow = max(1, n // len(emb))
        return Preview(nrow * len(emb), nrow, {"embedding": emb.repeat_interleave(nrow, 0)})
