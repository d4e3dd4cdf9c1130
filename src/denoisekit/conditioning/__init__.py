"""Condition kinds: what a run is conditioned on, and everything that kind of condition needs.

A run's ``condition`` section names one ``kind`` from :data:`CONDITIONS` or a list of them
(:mod:`~denoisekit.conditioning.composite`); the keys its ``cond`` has are the schema of
:mod:`denoisekit.condition`:

=========  =====================================  =============================================
kind       dataset field -> ``cond``               dropout (classifier-free guidance)
=========  =====================================  =============================================
none       nothing -> ``None``                     --
class      ``label`` -> labels (B,)               label -> the null label ``num_classes``
text       ``caption`` -> ``{"text": [...]}``      caption -> ``""`` (the empty prompt)
image      ``image`` -> ``{"concat": ...}``        none: the degraded image is the task's input
embedding  ``embedding`` -> ``{"embedding": ...}``  embedding -> zeros (the null embedding)
=========  =====================================  =============================================

Each kind (:class:`~denoisekit.conditioning.base.ConditionKind`) owns its options, its checks of the run
config and the data, its network wrapping, its training condition and its preview.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._utils import lookup
from .base import ConditionKind, NoCondition, Preview, collate
from .composite import CompositeCondition, combine
from .embedding import EmbeddingCondition
from .image import ImageCondition, ImageConditionConfig, ImageConditioner, Source
from .label import ClassCondition
from .text import MINILM_DIM, TextCondition

CONDITIONS: dict[str, type[ConditionKind]] = {"none": NoCondition, "class": ClassCondition, "text": TextCondition,
                                              "image": ImageCondition, "embedding": EmbeddingCondition}


def condition_kind(name: str | Sequence[str]) -> type[ConditionKind]:
    """The kind named ``name`` in :data:`CONDITIONS`, or for a list of names their composite (one name in a
    list is that kind); ``ValueError`` for an unknown name or kinds that clash."""
    if isinstance(name, str):
        return lookup("condition kind", CONDITIONS, name)
    names = list(name)
    if not names:
        raise ValueError("a list of condition kinds needs at least one kind")
    parts = [lookup("condition kind", CONDITIONS, n) for n in names]
    return parts[0] if len(parts) == 1 else combine(parts)


def _which(flag: str) -> str:
    return " or ".join(k for k, kind in CONDITIONS.items() if getattr(kind, flag))


def check_run(run: Any) -> None:
    """``ValueError`` when the run config's condition does not fit the rest of the run: each kind's own
    checks, then the shared ones (cross-attention, guidance and prompts need a kind that uses them)."""
    kind = condition_kind(run.condition.kind)
    kind.check_run(run.condition_options(), run)
    context_dim = run.model.options.get("context_dim")
    if context_dim is not None and not kind.cross_attention:
        raise ValueError(f"model.context_dim={context_dim} (cross-attention) needs condition.kind: "
                         f"{_which('cross_attention')}")
    if run.sample.cfg_scale != 1 and not kind.guidable:
        raise ValueError(f"sample.cfg_scale={run.sample.cfg_scale} needs condition.kind {_which('guidable')}")
    if run.sample.prompts and not kind.prompts:
        raise ValueError(f"sample.prompts needs condition.kind: {_which('prompts')}")


def condition_keys(condition: Any) -> tuple[str, ...]:
    """The condition keys a run's condition kind (instance or class; None: unconditional) claims."""
    return tuple(getattr(condition, "keys", ()))


def image_conditioner(condition: Any) -> ImageConditioner | None:
    """The Palette conditioner of a run's condition (an ``image`` kind, alone or in a composite), or None."""
    for part in getattr(condition, "members", [condition]):
        if isinstance(part, ImageCondition) and part.conditioner is not None:
            return part.conditioner
    return None


__all__ = ["CONDITIONS", "ClassCondition", "CompositeCondition", "ConditionKind", "EmbeddingCondition",
           "ImageCondition", "ImageConditionConfig", "ImageConditioner", "MINILM_DIM", "NoCondition", "Preview",
           "Source", "TextCondition", "check_run", "collate", "combine", "condition_keys", "condition_kind",
           "image_conditioner"]
