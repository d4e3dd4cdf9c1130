"""LoRA adapters on a network's attention projections (and optionally its convolutions), through ``peft``.

Low-rank adaptation (Hu et al. 2022, Eq. 3): a frozen weight ``W`` becomes ``W + w (alpha / r) B A`` with
``A (r, d_in)`` random, ``B (d_out, r) = 0`` (so an adapted network starts as the network itself) and ``w``
the adapter's weight at sampling time. Several named adapters live on one network; :func:`set_weights`
picks the active ones and their weights without reloading, :func:`merge` folds them into ``W`` and
:func:`unmerge` restores ``W`` bit for bit, :func:`disabled` runs the base network.

An adapter's tensors in the library's own layout (:func:`adapter_tensors`) are keyed by the module path in
the *base* network: ``blocks.0.attn.qkv.lora_A.weight`` ``(r, d_in)`` and ``...lora_B.weight``
``(d_out, r)``; files and the diffusers / kohya layouts are in :mod:`denoisekit.models.lora_io`.
Used by variational score distillation's particle denoiser (Wang et al. 2023) and the ``lora`` recipe.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

#: The attention projections of :class:`denoisekit.models.layers.Attention`: fused self-attention ``qkv``,
#: cross-attention ``q`` and ``kv``, and the output ``proj``.
ATTENTION_TARGETS = ("qkv", "q", "kv", "proj")
#: The same projections in a diffusers network (:class:`~denoisekit.models.diffusers_unet.DiffusersUNet`).
DIFFUSERS_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: The 3x3 convolutions of the U-Net's residual blocks (``LoraConfig(convs=True)``).
CONV_TARGETS = ("conv1", "conv2")


@dataclass(frozen=True)
class LoraConfig:
    """One adapter: ``rank`` r, ``alpha`` (None: r, so the scale ``alpha / r`` is 1), ``dropout`` on the
    adapter's input (Hu et al. 2022 use 0.05-0.1 when fine-tuning), the modules it adapts by name (see
    :func:`target_modules`) and,
    with ``convs``, also the residual blocks' ``nn.Conv2d`` (:data:`CONV_TARGETS`). ``modules``: only these
    module paths among those (empty: all); ``ranks``: per-module ranks that differ from ``rank`` (both for
    imported files; the scale stays ``alpha / rank`` everywhere)."""

    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = ATTENTION_TARGETS
    convs: bool = False
    modules: tuple[str, ...] = ()
    ranks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0 (or null: the rank), got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets and not self.convs:
            raise ValueError("LoRA targets is empty and convs is false: nothing to adapt")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "modules", tuple(self.modules))

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets), "modules": list(self.modules)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"LoRA config: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**{**d, "targets": tuple(d.get("targets", ATTENTION_TARGETS)), "modules": tuple(d.get("modules", ())),
                      "ranks": dict(d.get("ranks", {}))})


def _peft():
    try:
        import peft
    except ImportError as e:  # an optional dependency: one line, not a traceback
        raise ImportError("LoRA needs the peft package: pip install peft") from e
    return peft


def lora_layers(net: nn.Module) -> dict[str, Any]:
    """``{module path: peft LoRA layer}`` of an adapted network."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in net.named_modules() if isinstance(m, LoraLayer)}


def adaptable_modules(net: nn.Module) -> dict[str, nn.Module]:
    """``{path: module}`` of every ``nn.Linear`` and ``nn.Conv2d`` of ``net`` (an adapted layer as its base)."""
    layers = lora_layers(net)
    return {n: layers[n].get_base_layer() if n in layers else m for n, m in net.named_modules()
            if ".base_layer" not in f".{n}" and "lora_" not in n
            and isinstance(layers[n].get_base_layer() if n in layers else m, (nn.Linear, nn.Conv2d))}


def target_modules(net: nn.Module, config: LoraConfig) -> list[str]:
    """The module paths ``config`` adapts in ``net``: those whose path is a target or ends in ``.target``
    (``qkv``, ``to_out.0``, a whole path), and with ``convs`` the ``nn.Conv2d`` named :data:`CONV_TARGETS`."""
    out = []
    for n, m in adaptable_modules(net).items():
        if any(n == t or n.endswith("." + t) for t in config.targets) or \
                (config.convs and isinstance(m, nn.Conv2d) and n.rpartition(".")[2] in CONV_TARGETS):
            out.append(n)
    if config.modules:
        unknown = sorted(set(config.modules) - set(out))
        if unknown:
            raise ValueError(f"LoRA module {unknown[0]!r} is not an adaptable module of this {type(net).__name__}"
                             f" ({len(unknown)} such; it has e.g. {out[0] if out else 'none'!r})")
        out = [n for n in out if n in set(config.modules)]
    return out


def adapters(net: nn.Module) -> dict[str, LoraConfig]:
    """The named adapters of ``net`` and their configs (in the order they were added)."""
    return dict(getattr(net, "lora_adapters", {}))


def add_adapter(net: nn.Module, config: LoraConfig, name: str = "default", *, trainable: bool = True) -> nn.Module:
    """Add adapter ``name`` (``B = 0``) to ``net`` in place and make it the only active one, at weight 1. Every
    non-LoRA parameter is frozen; the new adapter's weights require grad when ``trainable``, older ones keep
    theirs. A config that matches no module, or a name already used, is a ``ValueError``."""
    peft = _peft()
    if not name or "." in name:
        raise ValueError(f"adapter name {name!r}: must be non-empty and without dots")
    if name in adapters(net):
        raise ValueError(f"{type(net).__name__} already has a LoRA adapter named {name!r}")
    if any(layer.merged for layer in lora_layers(net).values()):
        raise ValueError("unmerge the LoRA adapters before adding another one")
    names = target_modules(net, config)
    if not names:
        what = list(config.targets) + (list(CONV_TARGETS) if config.convs else [])
        hint = f" (a diffusers network's are {', '.join(DIFFUSERS_TARGETS)})" if any(
            n.endswith(".to_q") for n in adaptable_modules(net)) else ""
        raise ValueError(f"no nn.Linear/nn.Conv2d named {what} in {type(net).__name__}: nothing to adapt{hint}")
    unknown = sorted(set(config.ranks) - set(names))
    if unknown:
        raise ValueError(f"LoRA ranks name modules {unknown[:3]} that the config does not adapt")
    grads = {p: p.requires_grad for n, p in net.named_parameters() if "lora_" in n}
    alpha = config.alpha if config.alpha is not None else config.rank
    pc = peft.LoraConfig(r=config.rank, lora_alpha=alpha, target_modules=names, lora_dropout=config.dropout,
                         rank_pattern={f"^{re.escape(k)}$": r for k, r in config.ranks.items()},
                         alpha_pattern={f"^{re.escape(k)}$": alpha * r / config.rank for k, r in config.ranks.items()})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")  # several adapters on one model is the point
        peft.inject_adapter_in_model(pc, net, adapter_name=name)
    net.lora_adapters = {**adapters(net), name: config}
    for n, p in net.named_parameters():  # older adapters keep their flags; the base stays frozen
        p.requires_grad_(grads[p] if p in grads else trainable and "lora_" in n)
    set_weights(net, {name: 1.0})
    return net


def add_lora(net: nn.Module, rank: int = 4, alpha: float | None = None,
             targets: Sequence[str] = ATTENTION_TARGETS, *, copy_net: bool = True, dropout: float = 0.0,
             convs: bool = False, name: str = "default") -> nn.Module:
    """``net`` (a deep copy unless ``copy_net=False``) with a LoRA adapter of ``rank`` on every ``nn.Linear``
    whose name ends in one of ``targets``; only the LoRA weights require grad. ``alpha`` defaults to ``rank``
    (scale 1)."""
    config = LoraConfig(rank=rank, alpha=alpha, dropout=dropout, targets=tuple(targets), convs=convs)
    if not target_modules(net, config):  # before copying a large network
        raise ValueError(f"no nn.Linear named {list(targets)} in {type(net).__name__}: nothing to adapt")
    return add_adapter(copy.deepcopy(net) if copy_net else net, config, name)


def remove_adapter(net: nn.Module, name: str) -> None:
    """Remove adapter ``name`` (unmerging first); a layer left without adapters is its base layer again."""
    _check_names(net, [name])
    unmerge(net)
    weights = {n: w for n, w in get_weights(net).items() if n != name}
    modules = dict(net.named_modules())
    for path, layer in lora_layers(net).items():
        if name in layer.lora_A:
            layer.delete_adapter(name)
        if not layer.lora_A:
            parent, _, last = path.rpartition(".")
            setattr(modules[parent] if parent else net, last, layer.get_base_layer())
    net.lora_adapters = {n: c for n, c in adapters(net).items() if n != name}
    if getattr(net, "peft_config", None) is not None:
        net.peft_config.pop(name, None)
    set_weights(net, weights)


def lora_parameters(net: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """The LoRA weights of an adapted network (of adapter ``name``; default all): what an optimiser trains."""
    return [p for n, p in net.named_parameters() if "lora_" in n
            and (name is None or f".lora_A.{name}." in n or f".lora_B.{name}." in n)]


def _check_names(net: nn.Module, names: Sequence[str]) -> None:
    have = adapters(net)
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ValueError(f"no LoRA adapter named {unknown[0]!r} on {type(net).__name__}; it has: "
                         f"{', '.join(have) or 'none'}")


def set_weights(net: nn.Module, weights: Mapping[str, float]) -> None:
    """Make exactly the adapters in ``weights`` active, each at its weight (its delta is ``w * alpha/r * B A``);
    no reloading, and a merged network is re-merged at the new weights."""
    _check_names(net, list(weights))
    layers = lora_layers(net)
    merged = any(layer.merged for layer in layers.values())
    if merged:
        unmerge(net)
    grads = {p: p.requires_grad for p in lora_parameters(net)}
    for layer in layers.values():
        active = [n for n in weights if n in layer.lora_A]
        layer.set_adapter(active)  # peft's: also flips requires_grad, restored below
        for n in active:
            layer.set_scale(n, float(weights[n]))
    for p, g in grads.items():
        p.requires_grad_(g)
    if merged:
        merge(net)


def get_weights(net: nn.Module) -> dict[str, float]:
    """The active adapters and their weights."""
    out: dict[str, float] = {}
    for layer in lora_layers(net).values():
        for n in layer.active_adapters:
            if n in layer.scaling:
                out.setdefault(n, layer.scaling[n] / (layer.lora_alpha[n] / layer.r[n]))
    return out


@torch.no_grad()
def merge(net: nn.Module) -> None:
    """Fold the active adapters at their weights into the base weights (the forward pass then costs what the
    base's does). The base weights are kept, so :func:`unmerge` restores them bit for bit."""
    for layer in lora_layers(net).values():
        if layer.merged:
            continue
        base = layer.get_base_layer()
        layer._denoisekit_base = base.weight.detach().clone()
        layer.merge(adapter_names=[n for n in layer.active_adapters if n in layer.lora_A])


@torch.no_grad()
def unmerge(net: nn.Module) -> None:
    """Undo :func:`merge`: the base weights exactly as they were."""
    for layer in lora_layers(net).values():
        if not layer.merged:
            continue
        layer.unmerge()
        saved = getattr(layer, "_denoisekit_base", None)
        if saved is not None:
            layer.get_base_layer().weight.copy_(saved)
            del layer._denoisekit_base


def is_merged(net: nn.Module) -> bool:
    return any(layer.merged for layer in lora_layers(net).values())


def enable(net: nn.Module, on: bool = True) -> None:
    """Turn every adapter on or off (off: the base network; merged adapters are unmerged first)."""
    if not on:
        unmerge(net)
    for layer in lora_layers(net).values():
        layer.enable_adapters(on)


@contextmanager
def disabled(net: nn.Module) -> Iterator[nn.Module]:
    """``with disabled(net):`` calls run the base network; afterwards the adapters are on again (re-merged
    when they were merged)."""
    merged = is_merged(net)
    enable(net, False)
    try:
        yield net
    finally:
        enable(net, True)
        if merged:
            merge(net)


def adapter_tensors(net: nn.Module, name: str = "default") -> dict[str, Tensor]:
    """Adapter ``name``'s weights keyed ``<base module path>.lora_A.weight`` / ``.lora_B.weight`` (detached)."""
    _check_names(net, [name])
    out = {}
    for path, layer in lora_layers(net).items():
        if name in layer.lora_A:
            out[f"{path}.lora_A.weight"] = layer.lora_A[name].weight.detach()
            out[f"{path}.lora_B.weight"] = layer.lora_B[name].weight.detach()
    return out


def module_ranks(tensors: Mapping[str, Tensor]) -> dict[str, int]:
    """``{module path: rank}`` of tensors in the library's layout (the rows of each ``lora_A``)."""
    return {k[: -len(".lora_A.weight")]: int(v.shape[0]) for k, v in tensors.items() if k.endswith(".lora_A.weight")}


@torch.no_grad()
def load_adapter_tensors(net: nn.Module, tensors: Mapping[str, Tensor], name: str = "default",
                         source: str = "LoRA tensors") -> None:
    """Copy tensors of :func:`adapter_tensors`'s layout into adapter ``name``. A key that names no adapted
    module of ``net``, a module with no tensor, or a shape that differs is a ``ValueError`` naming ``source``."""
    _check_names(net, [name])
    mine = adapter_tensors(net, name)
    unknown = sorted(set(tensors) - set(mine))
    if unknown:
        raise ValueError(f"{source}: key {unknown[0]!r} matches no LoRA module of this {type(net).__name__}"
                         f" ({len(unknown)} unknown keys; it has e.g. {next(iter(mine), 'none')!r})")
    missing = sorted(set(mine) - set(tensors))
    if missing:
        raise ValueError(f"{source}: no tensor for {missing[0]!r} ({len(missing)} missing)")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(mine[k].shape):
            raise ValueError(f"{source}: {k!r} has shape {tuple(t.shape)}, this network's is {tuple(mine[k].shape)}"
                             f" (an adapter for another base?)")
        mine[k].copy_(t.to(mine[k].dtype))


def base_state_dict(net: nn.Module) -> dict[str, Tensor]:
    """``net``'s state dict without its adapters, keyed as the base network's (unmerged weights)."""
    out = {}
    layers = lora_layers(net)
    saved = {f"{p}.base_layer.weight": layer._denoisekit_base for p, layer in layers.items()
             if getattr(layer, "_denoisekit_base", None) is not None}
    for k, v in net.state_dict().items():
        if "lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = saved.get(k, v)
    return out
