"""Captions: ``caption`` -> ``{"text": [B prompts]}`` through a text encoder and cross-attention (Rombach et al.
2022, Sec. 3.3; Saharia et al. 2022), dropped to the empty prompt, whose embedding is the unconditional one.

The network is wrapped in :class:`~denoisekit.models.text.TextConditioned`, which encodes the prompts
itself (frozen MiniLM with a cache, or a learned token encoder trained with the backbone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .._utils import check_choice
from .base import ConditionKind, Preview, preview_items

#: Width of the MiniLM encoder's token embeddings (``model.context_dim`` of a ``minilm`` text model).
MINILM_DIM = 384


class TextCondition(ConditionKind):
    """Captions through a text encoder and cross-attention (Rombach et al. 2022; Saharia et al. 2022);
    dropped to the empty prompt, whose embedding is the unconditional one."""

    kind = "text"
    fields = ("caption",)
    keys = ("text",)
    guidable = True
    cross_attention = True
    prompts = True

    @dataclass(frozen=True)
    class Config:
        """``encoder``: ``minilm`` (frozen, pretrained, 384-d, needs the ``text`` extra) or ``tokens`` (a small
        learned encoder of width ``dim``); prompts are cut to ``max_tokens`` tokens. MiniLM keeps the
        embeddings of its last ``cache_size`` prompts (as many as a dataset has captions avoids re-encoding)."""

        encoder: Literal["minilm", "tokens"] = "minilm"
        max_tokens: int = 32
        cache_size: int = 4096
        vocab_size: int = 4096
        dim: int = 128
        layers: int = 2
        heads: int = 4

        def __post_init__(self) -> None:
            check_choice("encoder", self.encoder, ("minilm", "tokens"))
            for name in ("max_tokens", "cache_size", "vocab_size", "dim", "layers", "heads"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
            if self.dim % self.heads:
                raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

        @property
        def context_dim(self) -> int:
            return MINILM_DIM if self.encoder == "minilm" else self.dim

        def encoder_options(self) -> dict[str, Any]:
            if self.encoder == "minilm":
                return {"max_tokens": self.max_tokens, "cache_size": self.cache_size}
            return {"max_tokens": self.max_tokens, "vocab_size": self.vocab_size, "dim": self.dim,
                    "layers": self.layers, "heads": self.heads}

    @classmethod
    def check_run(cls, options: Any, run: Any) -> None:
        want, got = options.context_dim, run.model.options.get("context_dim")
        if got != want:
            raise ValueError(f"condition.kind is 'text' with encoder {options.encoder!r}: "
                             f"model.context_dim must be {want} (the encoder's width), got {got}")

    @classmethod
    def wrap_network(cls, net: nn.Module, options: Any) -> nn.Module:
        """The network encodes its prompts (a learned encoder trains with it)."""
        from ..models.text import TextConditioned

        return TextConditioned(net, options.encoder, **options.encoder_options())

    def prompts_of(self, values: Any) -> list[str]:
        captions = list(values)
        for c in captions:
            if not isinstance(c, str):
                raise ValueError(f"dataset captions must be strings, got {type(c).__name__}: {c!r}")
        return captions

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> dict[str, Any]:
        captions = self.prompts_of(batch["caption"])
        if self.dropout > 0:
            captions = ["" if d else c for c, d in zip(captions, self._dropped(gens).tolist())]
        return {"text": captions}

    def items_preview(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Preview:
        captions = self.prompts_of(batch["caption"])
        return Preview(len(captions), len(captions), {"text": captions})

    def preview(self, n: int, dataset: Any, device: Any, *, seed: int = 0, prompts: Sequence[str] = ()) -> Preview:
        """One row per prompt: ``prompts`` (``sample.prompts``), else the first dataset captions."""
        prompts = list(prompts) or [str(it["caption"]) for it in preview_items(dataset, n)]
        nrow = max(1, n // len(prompts))
        return Preview(nrow * len(prompts), nrow, {"text": [p for p in prompts for _ in range(nrow)]},
                       row_labels=tuple(prompts))
