"""Several condition kinds in one run (class + image, text + embedding, ...): ``condition.kind: [class, image]``.

The composite's options are its kinds' options side by side (one flat ``condition`` section), its ``cond``
the union of theirs (:func:`~denoisekit.condition.merge_conditions`), its dataset fields the union of
theirs. Each kind keeps its own checks, network wrapping (in list order) and dropout: each drops its part
of the condition independently with probability ``condition.dropout``, drawing from the per-sample
generators in list order. Two kinds that claim one condition key or one option name cannot be combined.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .._utils import seeded_generators
from ..condition import merge_conditions
from ..options import hints
from .base import ConditionKind, Preview, collate, preview_items


class CompositeCondition(ConditionKind):
    """The kinds of :attr:`parts` at once (built by :func:`combine`)."""

    parts: ClassVar[tuple[type[ConditionKind], ...]] = ()

    def __init__(self, config: Any = None, *, dropout: float = 0.0, num_classes: int | None = None,
                 image_shape: Sequence[int] = ()):
        super().__init__(config, dropout=dropout, num_classes=num_classes, image_shape=image_shape)
        self.members = [part(options, dropout=dropout, num_classes=num_classes, image_shape=image_shape)
                        for part, options in zip(self.parts, self.config.split())]

    @classmethod
    def check_run(cls, options: Any, run: Any) -> None:
        for part, opts in zip(cls.parts, options.split()):
            part.check_run(opts, run)

    @classmethod
    def wrap_network(cls, net: nn.Module, options: Any) -> nn.Module:
        for part, opts in zip(cls.parts, options.split()):
            net = part.wrap_network(net, opts)
        return net

    def check_data(self, dataset: Any, item: Mapping[str, Any], run: Any) -> None:
        for member in self.members:
            member.check_data(dataset, item, run)

    def check_model(self, run: Any) -> None:
        for member in self.members:
            member.check_model(run)

    def training(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Any:
        return merge_conditions(*(member.training(batch, gens, device) for member in self.members))

    def items_preview(self, batch: Mapping[str, Any], gens: Sequence[torch.Generator], device: Any) -> Preview:
        views = [member.items_preview(batch, gens, device) for member in self.members]
        n = len(batch["image"])
        return Preview(n, n, merge_conditions(*(v.cond for v in views)),
                       before=tuple(t for v in views for t in v.before), after=tuple(t for v in views for t in v.after))

    def preview(self, n: int, dataset: Any, device: Any, *, seed: int = 0, prompts: Sequence[str] = ()) -> Preview:
        """One sample per item of the first dataset items, conditioned on each of the item's parts (the
        prompts, when given, replace the captions in turn)."""
        items = preview_items(dataset, n)
        view = self.items_preview(collate(items, self.fields), seeded_generators(seed, len(items)), device)
        if prompts and isinstance(view.cond, Mapping) and "text" in view.cond:
            text = [prompts[i % len(prompts)] for i in range(len(items))]
            view = dataclasses.replace(view, cond={**view.cond, "text": text})
        return view


def combine(parts: Sequence[type[ConditionKind]]) -> type[CompositeCondition]:
    """One kind made of ``parts``; ``ValueError`` naming both kinds when two claim one condition key or
    one option name."""
    keys: dict[str, str] = {}
    for part in parts:
        for key in part.keys:
            if key in keys:
                raise ValueError(f"condition kinds {keys[key]!r} and {part.kind!r} both claim the condition key "
                                 f"{key!r}; they cannot be combined")
            keys[key] = part.kind
    owner: dict[str, str] = {}
    specs: list[tuple[str, Any, Any]] = []
    for part in parts:
        types = hints(part.Config)
        for f in dataclasses.fields(part.Config):
            if not f.init:
                continue
            if f.name in owner:
                raise ValueError(f"condition kinds {owner[f.name]!r} and {part.kind!r} both have the option "
                                 f"{f.name!r}; they cannot be combined")
            owner[f.name] = part.kind
            default = ({"default": f.default} if f.default is not dataclasses.MISSING else
                       {"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING else {})
            specs.append((f.name, types.get(f.name, Any), dataclasses.field(**default)))
    members = tuple(parts)

    def split(self: Any) -> tuple[Any, ...]:
        """Each kind's own options (its ``Config``, which validates them)."""
        return tuple(p.Config(**{f.name: getattr(self, f.name) for f in dataclasses.fields(p.Config) if f.init})
                     for p in members)

    config = dataclasses.make_dataclass("CompositeConfig", specs, frozen=True, kw_only=True,
                                        namespace={"split": split, "__post_init__": lambda self: self.split()})
    fields = tuple(dict.fromkeys(f for p in parts for f in p.fields))
    return type("CompositeCondition", (CompositeCondition,), {
        "kind": "+".join(p.kind for p in parts), "parts": members, "Config": config, "fields": fields,
        "keys": tuple(keys), "guidable": any(p.guidable for p in parts),
        "cross_attention": any(p.cross_attention for p in parts), "prompts": any(p.prompts for p in parts)})
