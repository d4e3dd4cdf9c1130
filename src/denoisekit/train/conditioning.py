"""Training recipes by condition: what a batch turns into for the network, with dropout for guidance.

A run's ``condition`` config section picks one ``kind`` from :data:`CONDITIONS`:

========  ==================================  ===================================================
kind      dataset field -> ``cond``            dropout (classifier-free guidance)
========  ==================================  ===================================================
none      nothing -> ``None``                  --
class     ``label`` -> labels (B,)            label -> the null label ``num_classes``
text      ``caption`` -> ``{"text": [...]}``   caption -> ``""`` (the empty prompt)
image     ``image`` -> ``{"concat": ...}``     none: the degraded image is the task's input
========  ==================================  ===================================================

Dropout draws one uniform number per sample from that sample's generator (the same stream as its
noise), so the maths of a step is independent of batch size, process count and resumption. A text
model's network is :class:`~denoisekit.models.text.TextConditioned`, which encodes the prompts itself
(frozen MiniLM with a cache, or a learned token encoder trained with the backbone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .._utils import check_choice
from .image_condition import ImageConditionConfig, ImageConditioner

#: Width of the MiniLM encoder's token embeddings (``model.context_dim`` of a ``minilm`` text model).
MINILM_DIM = 384


class NoCondition:
    """Unconditional training."""

    kind: ClassVar[str] = "none"
    fields: ClassVar[tuple[str, ...]] = ()

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Config | None = None, *, dropout: float = 0.0, num_classes: int | None = None,
                 image_shape: Sequence[int] = ()):
        self.config, self.dropout, self.num_classes = config or self.Config(), dropout, num_classes
        self.image_shape = tuple(image_shape)

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Any:
        return None

    def _dropped(self, gens: Sequence[torch.Generator]) -> Tensor:
        # One draw per sample, even with dropout 0: the noise stream after it is then the same either way.
        return torch.stack([torch.rand((), generator=g) for g in gens]) < self.dropout


class ClassCondition(NoCondition):
    """Class labels ``0..num_classes-1``; dropped to the null label ``num_classes`` (Ho & Salimans 2022)."""

    kind = "class"
    fields = ("label",)

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


class TextCondition(NoCondition):
    """Captions through a text encoder and cross-attention (Rombach et al. 2022; Saharia et al. 2022);
    dropped to the empty prompt, whose embedding is the unconditional one."""

    kind = "text"
    fields = ("caption",)

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

    def prompts(self, values: Any) -> list[str]:
        captions = list(values)
        for c in captions:
            if not isinstance(c, str):
                raise ValueError(f"dataset captions must be strings, got {type(c).__name__}: {c!r}")
        return captions

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> dict[str, Any]:
        captions = self.prompts(batch["caption"])
        if self.dropout > 0:
            captions = ["" if d else c for c, d in zip(captions, self._dropped(gens).tolist())]
        return {"text": captions}


class ImageCondition(NoCondition):
    """An image derived from the clean one (grey, low resolution, masked) concatenated to the network's
    input: Palette (Saharia et al. 2022); see :mod:`denoisekit.train.image_condition`."""

    kind = "image"
    fields = ()
    Config = ImageConditionConfig  # the task's own options


    def __init__(self, config: Any = None, *, dropout: float = 0.0, num_classes: int | None = None,
                 image_shape: Sequence[int] = ()):
        super().__init__(config, dropout=dropout, num_classes=num_classes, image_shape=image_shape)
        self.conditioner = ImageConditioner(self.config, self.image_shape) if self.image_shape else None

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> dict[str, Any]:
        assert self.conditioner is not None
        cond = self.conditioner.training(batch["image"].to(device, torch.float32), gens)
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in cond.items()}


CONDITIONS: dict[str, type[NoCondition]] = {"none": NoCondition, "class": ClassCondition, "text": TextCondition,
                                            "image": ImageCondition}


def collate(items: Sequence[Mapping[str, Any]], fields: Sequence[str] = ()) -> dict[str, Any]:
    """Batch ``image`` and the ``fields`` a condition needs (labels stacked, captions as a list); other
    item fields (masks, ...) are neither collated nor required to have equal shapes."""
    out: dict[str, Any] = {"image": torch.stack([torch.as_tensor(it["image"]) for it in items])}
    for name in fields:
        if any(it.get(name) is None for it in items):
            raise ValueError(f"the run's condition needs a {name!r} in every dataset item; one has none")
        values = [it[name] for it in items]
        out[name] = torch.tensor([int(v) for v in values], dtype=torch.long) if name == "label" else values
    return out
