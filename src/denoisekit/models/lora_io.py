"""LoRA adapter files: the library's own layout, diffusers' PEFT layout and the kohya layout.

======================  ======================================================  ==========================
layout                  keys (for module ``M``)                                 scale
======================  ======================================================  ==========================
``denoisekit``          ``M.lora_A.weight`` ``(r, d_in)``, ``M.lora_B.weight``   config's ``alpha / r``
``diffusers``           ``unet.M'.lora_A.weight``, ``unet.M'.lora_B.weight``      metadata's ``lora_alpha / r``
                        (``transformer.`` for a DiT)                             (absent: 1)
``kohya``               ``lora_unet_m.lora_down.weight`` (A), ``.lora_up``       ``alpha / r`` per module
                        (B), ``.alpha`` (a scalar); ``m`` is ``M'`` with ``_``
                        for ``.``
======================  ======================================================  ==========================

``M'`` is our module path with the projection named as diffusers names it (the blocks keep our paths).
The name map, decided here: the fused projections of
:class:`~denoisekit.models.layers.Attention` become diffusers' separate ones, ``P.qkv -> P.to_q, P.to_k,
P.to_v`` (the rows ``[0:d], [d:2d], [2d:3d]`` of ``B``, each with the whole ``A``), ``P.kv -> P.to_k,
P.to_v``, ``P.q -> P.to_q``, ``P.proj -> P.to_out.0``; other modules keep their names (kohya: dots become
underscores). Importing undoes it: parts that share one ``A`` (an export of ours) fuse back to rank ``r``
exactly; parts with their own ``A_i`` fuse to rank ``sum r_i`` with block-diagonal ``B``, the same delta.
A missing part is a zero block. Any scale that differs from the adapter's is folded into ``B``.

Files carry the adapter's :class:`~denoisekit.models.lora.LoraConfig` and its base's hash in the safetensors
metadata; :func:`load_adapter` refuses a file for another base and a key that names no module.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..io import save_tensors_atomic
from . import lora
from .layers import Attention

Layout = Literal["denoisekit", "diffusers", "kohya"]
LAYOUTS = ("denoisekit", "diffusers", "kohya")
FORMAT = "denoisekit.lora"
#: Where a ``lora`` run writes its adapter (``sample --lora RUN`` reads it).
ADAPTER_FILE = "lora.safetensors"
#: Our fused projection -> diffusers' parts, each with the row block of ``B`` it takes (in units of ``d``).
FUSED = {"qkv": ("to_q", "to_k", "to_v"), "kv": ("to_k", "to_v"), "q": ("to_q",), "proj": ("to_out.0",)}


def _prefix(net: nn.Module) -> str:
    return "unet" if "unet" in type(net).__name__.lower() else "transformer"


def _external(net: nn.Module, part: str) -> str:
    """A part's name without the wrapper's own prefix (a DiffusersUNet holds diffusers' model as ``unet.``)."""
    return part.removeprefix(_prefix(net) + ".")


def _internal(net: nn.Module, owner: Mapping[str, object], name: str) -> str:
    """The part of ``net`` an external name means: as it is, or under the wrapper's prefix, or without it."""
    for cand in (name, f"{_prefix(net)}.{name}", name.removeprefix(_prefix(net) + ".")):
        if cand in owner:
            return cand
    return name


def name_map(net: nn.Module) -> dict[str, list[str]]:
    """``{our module path: [diffusers module names]}`` for every module a LoRA can adapt in ``net``."""
    out: dict[str, list[str]] = {}
    modules = dict(net.named_modules())
    for path in lora.adaptable_modules(net):
        parent, _, last = path.rpartition(".")
        if last in FUSED and isinstance(modules.get(parent), Attention):
            out[path] = [f"{parent}.{part}" for part in FUSED[last]]
        else:
            out[path] = [path]
    return out


def to_parts(net: nn.Module, tensors: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Split tensors of our layout into ``{diffusers name: (A, B)}`` (same scale)."""
    names = name_map(net)
    out = {}
    for path, r in lora.module_ranks(tensors).items():
        a, b = tensors[f"{path}.lora_A.weight"], tensors[f"{path}.lora_B.weight"]
        parts = names.get(path, [path])
        rows = b.shape[0] // len(parts)
        for i, part in enumerate(parts):
            out[part] = (a, b[i * rows:(i + 1) * rows])
    return out


def from_parts(net: nn.Module, parts: Mapping[str, tuple[Tensor, Tensor, float]], scale: float,
               source: str) -> dict[str, Tensor]:
    """Fuse ``{diffusers name: (A, B, scale_i)}`` into tensors of our layout at ``scale`` (see the module
    docstring); a name that is no module of ``net`` is a ``ValueError`` naming ``source``."""
    owner = {part: (path, i, len(ps)) for path, ps in name_map(net).items() for i, part in enumerate(ps)}
    parts = {_internal(net, owner, k): v for k, v in parts.items()}
    unknown = sorted(set(parts) - set(owner))
    if unknown:
        raise ValueError(f"{source}: LoRA module {unknown[0]!r} matches no module of this {type(net).__name__}"
                         f" ({len(unknown)} unknown; it has e.g. {next(iter(owner), 'none')!r})")
    grouped: dict[str, dict[int, tuple[Tensor, Tensor]]] = {}
    for name, (a, b, s) in parts.items():
        path, i, _ = owner[name]
        grouped.setdefault(path, {})[i] = (a, b * (s / scale))
    out, names, modules = {}, name_map(net), dict(net.named_modules())
    for path, got in grouped.items():
        n = len(names[path])
        layer = modules[path]
        weight = (layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer).weight
        rows = weight.shape[0] // n
        for i, (a_i, b_i) in got.items():
            if a_i.ndim != weight.ndim or b_i.ndim != weight.ndim or a_i.shape[1:] != weight.shape[1:] \
                    or b_i.shape[0] != rows or b_i.shape[1] != a_i.shape[0]:
                raise ValueError(f"{source}: {names[path][i]!r} has A {tuple(a_i.shape)} and B {tuple(b_i.shape)}, "
                                 f"which do not fit its weight {tuple(weight.shape)} in this {type(net).__name__}"
                                 f" (an adapter for another base?)")
        first_a = next(iter(got.values()))[0]
        if len(got) == n and all(torch.equal(a, first_a) for a, _ in got.values()):  # one shared A: rank r
            a = first_a
            b = torch.cat([got[i][1] for i in range(n)], 0)
        else:  # A_i stacked, B block-diagonal: the same delta at rank sum r_i
            order = sorted(got)
            a = torch.cat([got[i][0] for i in order], 0)
            b = torch.zeros(n * rows, a.shape[0], dtype=a.dtype)  # only Linear projections are fused
            col = 0
            for i in order:
                r_i = got[i][0].shape[0]
                b[i * rows:(i + 1) * rows, col:col + r_i] = got[i][1]
                col += r_i
        out[f"{path}.lora_A.weight"], out[f"{path}.lora_B.weight"] = a.contiguous(), b.contiguous()
    return out


def export_tensors(net: nn.Module, name: str = "default", layout: Layout = "denoisekit") -> dict[str, Tensor]:
    """Adapter ``name`` of ``net`` in ``layout`` (the scale of diffusers' layout is in :func:`save_adapter`'s
    metadata; kohya's ``alpha`` is per module)."""
    if layout not in LAYOUTS:
        raise ValueError(f"LoRA layout {layout!r} unknown; allowed: {', '.join(LAYOUTS)}")
    tensors = lora.adapter_tensors(net, name)
    if layout == "denoisekit":
        return dict(tensors)
    config = lora.adapters(net)[name]
    out = {}
    for part, (a, b) in to_parts(net, tensors).items():
        if layout == "diffusers":
            key = f"{_prefix(net)}.{_external(net, part)}"
            out[f"{key}.lora_A.weight"], out[f"{key}.lora_B.weight"] = a, b
        else:
            key = "lora_unet_" + _external(net, part).replace(".", "_")
            out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = a, b
            out[f"{key}.alpha"] = torch.tensor(config.scale * a.shape[0], dtype=torch.float32)
    return {k: v.clone().contiguous() for k, v in out.items()}  # parts share A: own copies for safetensors


def detect_layout(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> Layout:
    if metadata.get("format") == FORMAT and metadata.get("layout", "denoisekit") == "denoisekit":
        return "denoisekit"
    if any(k.endswith((".lora_down.weight", ".lora_up.weight")) for k in tensors):
        return "kohya"
    return "diffusers"


def import_tensors(net: nn.Module, tensors: Mapping[str, Tensor], metadata: Mapping[str, str],
                   source: str) -> tuple[dict[str, Tensor], lora.LoraConfig]:
    """A file's tensors (any layout) as our layout plus the adapter's config."""
    layout = detect_layout(tensors, metadata)
    own = json.loads(metadata["lora_config"]) if "lora_config" in metadata else None
    if layout == "denoisekit":
        if own is None:
            raise ValueError(f"{source}: a {FORMAT} file without its lora_config")
        config, out = lora.LoraConfig.from_dict(own), dict(tensors)
    else:
        parts: dict[str, tuple[Tensor, Tensor, float]] = {}
        if layout == "diffusers":
            meta = json.loads(metadata.get("lora_adapter_metadata", "{}"))
            for k in tensors:
                if not k.endswith(".lora_A.weight"):
                    if not k.endswith(".lora_B.weight"):
                        raise ValueError(f"{source}: key {k!r} is neither lora_A nor lora_B (diffusers layout)")
                    continue
                mod = k[: -len(".lora_A.weight")]
                b = tensors.get(f"{mod}.lora_B.weight")
                if b is None:
                    raise ValueError(f"{source}: {k!r} has no lora_B")
                r = tensors[k].shape[0]
                s = float(meta.get("lora_alpha", r)) / float(meta.get("r", r)) if meta else 1.0
                parts[mod.split(".", 1)[1] if mod.startswith(("unet.", "transformer.")) else mod] = (tensors[k], b, s)
                # (from_parts finds it under a wrapper's prefix too: DiffusersUNet's unet.)
        else:
            known = {_external(net, p).replace(".", "_"): p for ps in name_map(net).values() for p in ps}
            for k in tensors:
                mod, _, kind = k.partition(".")
                if kind not in ("lora_down.weight", "lora_up.weight", "alpha"):
                    raise ValueError(f"{source}: key {k!r} is not lora_down/lora_up/alpha (kohya layout)")
                if kind != "lora_down.weight":
                    continue
                flat = mod.removeprefix("lora_unet_")
                if flat not in known:
                    raise ValueError(f"{source}: LoRA module {mod!r} matches no module of this {type(net).__name__}")
                a, b = tensors[k], tensors.get(f"{mod}.lora_up.weight")
                if b is None:
                    raise ValueError(f"{source}: {k!r} has no lora_up")
                alpha = tensors.get(f"{mod}.alpha")
                parts[known[flat]] = (a, b, (float(alpha) if alpha is not None else a.shape[0]) / a.shape[0])
        if not parts:
            raise ValueError(f"{source}: no LoRA tensors")
        scales = Counter(s for _, _, s in parts.values())
        scale = lora.LoraConfig.from_dict(own).scale if own else scales.most_common(1)[0][0]
        out = from_parts(net, parts, scale, source)
        ranks = lora.module_ranks(out)
        rank = int(own["rank"]) if own else Counter(ranks.values()).most_common(1)[0][0]
        config = lora.LoraConfig(rank=rank, alpha=scale * rank, dropout=float(own["dropout"]) if own else 0.0,
                                 targets=tuple(sorted(ranks)), modules=tuple(sorted(ranks)),
                                 ranks={m: r for m, r in ranks.items() if r != rank})
    return out, config


def save_adapter(net: nn.Module, path: str | os.PathLike[str], name: str = "default", *,
                 base_sha256: str | None = None, layout: Layout = "denoisekit",
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write adapter ``name`` (only it) to a safetensors file in ``layout``, atomically, with its config and
    its base's hash in the metadata, plus ``metadata`` (e.g. an LCM-LoRA's prediction,
    :mod:`denoisekit.generation.lcm`)."""
    tensors = export_tensors(net, name, layout)  # first: an unknown name is its error
    config = lora.adapters(net)[name]
    meta = {**(metadata or {}), "format": FORMAT, "layout": layout, "lora_config": json.dumps(config.to_dict())}
    if base_sha256:
        meta["base_sha256"] = base_sha256
    if layout == "diffusers":
        meta["lora_adapter_metadata"] = json.dumps({"r": config.rank, "lora_alpha": config.scale * config.rank,
                                                    "lora_dropout": config.dropout})
    path = Path(path)
    save_tensors_atomic(path, tensors, meta)
    return path


def read_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A LoRA file's tensors and safetensors metadata; a missing or corrupt file is one line naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors' own error types for truncated or foreign files
        raise ValueError(f"LoRA file {str(path)!r}: cannot read safetensors ({e})") from None


def load_adapter(net: nn.Module, path: str | os.PathLike[str], name: str | None = None, weight: float = 1.0, *,
                 base_sha256: str | None = None) -> str:
    """Add the adapter in file ``path`` (any layout) to ``net`` as ``name`` (default: the file's stem) at
    ``weight``, keeping the other adapters' weights; returns the name. A file made for another base (its
    recorded hash differs from ``base_sha256``), an unknown key or a shape that differs is a ``ValueError``
    naming the file, and ``net`` is left as it was."""
    tensors, meta = read_adapter(path)
    source = f"LoRA file {str(path)!r}"
    if base_sha256 and meta.get("base_sha256") and meta["base_sha256"] != base_sha256:
        raise ValueError(f"{source} was trained on another base (sha256 {meta['base_sha256'][:12]}..., this model "
                         f"{base_sha256[:12]}...)")
    name = name or Path(path).stem.replace(".", "_")
    if name in lora.adapters(net):
        raise ValueError(f"{source}: an adapter named {name!r} is already loaded")
    native, config = import_tensors(net, tensors, meta, source)
    weights = lora.get_weights(net)
    try:
        lora.add_adapter(net, config, name, trainable=False)
        lora.load_adapter_tensors(net, native, name, source)
    except ValueError as e:
        if name in lora.adapters(net):
            lora.remove_adapter(net, name)
        lora.set_weights(net, weights)
        raise ValueError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
    lora.set_weights(net, {**weights, name: weight})
    return name
