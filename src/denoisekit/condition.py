"""The one condition schema: the keys a condition may have, and how to check, null, batch and index them.

A condition ``cond`` is ``None``, a ``(B,)`` integer label tensor (short for ``{"labels": ...}``) or a dict
whose keys are rows of :data:`CONDITION_KEYS`:

================  =========================  ===============  ========  ===============================
key               value                      null (CFG)       read by   meaning
================  =========================  ===============  ========  ===============================
``labels``        (B,) integer               the null label   network   class; ``num_classes`` = null
``text``          list of B prompts          ``""`` each      wrapper   prompts (``TextConditioned``)
``context``       (B, L, D) float            mask all False   network   cross-attention tokens
``context_mask``  (B, L) bool                (with context)   network   True = attend this token
``concat``        (B, K, H, W) float         kept             network   extra input channels (Palette)
``mask``          (B, 1, H, W) in {0, 1}     kept             wrapper   inpainting mask, 1 = missing
``control``       (B, C, H, W) float         kept             wrapper   control images (ControlNet)
``embedding``     (B, D) or (B, L, D) float  zeros            network   vectors/tokens for cross-attention
================  =========================  ===============  ========  ===============================

- **null**: the unconditional counterpart classifier-free guidance runs (Ho & Salimans 2022, eq. 6); the
  null of a condition is what training's dropout replaces it with. Inputs that are the task itself
  (an image to restore, a mask, a control image) are *kept*: there is nothing to guide away from.
  The null ``embedding`` is all zeros (one zero token: the cross-attention then sees no information).
- **batch** (:func:`concat_conditions`): tensors by ``torch.cat``, prompt lists by ``+``; token
  sequences (``context``) of different lengths are zero-padded to the longer with the padding masked.
- **index** (:func:`index_condition`): the rows of every part; a 0-dim tensor applies to every row.
- **check** (:func:`check_condition`): every part has one entry per sample; unknown keys are an error.

Networks read the keys marked "network" (:data:`NETWORK_KEYS`, checked by
:func:`denoisekit.models.layers.parse_conditioning`); the others are turned into those by a network
wrapper (prompts into ``context``) or read by a denoiser wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Null = Literal["null_label", "empty_prompt", "unattended", "zeros", "kept"]


@dataclass(frozen=True)
class ConditionKey:
    """One key of a condition dict and its rules (see the module docstring).

    ``null``: what the unconditional branch gets. ``prompts``: the value is a list of ``B`` strings
    (else a ``(B, ...)`` tensor). ``network``: backbones read it (else a wrapper does). ``mask``: the key
    of this token sequence's ``(B, L)`` mask, which batching pads and the null rule sets to all False.
    """

    name: str
    shape: str
    meaning: str
    null: Null = "kept"
    prompts: bool = False
    network: bool = False
    mask: str | None = None


CONDITION_KEYS: dict[str, ConditionKey] = {k.name: k for k in (
    ConditionKey("labels", "(B,) integer", "class labels; num_classes (or -1) is the null label", "null_label",
                 network=True),
    ConditionKey("text", "list of B prompts", "prompts, encoded by a text-conditioned network", "empty_prompt",
                 prompts=True),
    ConditionKey("context", "(B, L, D) float", "token embeddings for cross-attention", "unattended", network=True,
                 mask="context_mask"),
    ConditionKey("context_mask", "(B, L) bool", "True = a real token of context; False tokens are ignored",
                 network=True),
    ConditionKey("concat", "(B, K, H, W) float", "extra input channels (Palette-style image condition)",
                 network=True),
    ConditionKey("mask", "(B, 1, H, W) in {0, 1}", "inpainting mask, 1 = missing"),
    ConditionKey("control", "(B, C, H, W) float", "control images (edges, depth, pose) for a ControlNet"),
    ConditionKey("embedding", "(B, D) or (B, L, D) float", "per-sample vectors or token sequences, read as "
                 "cross-attention context tokens", "zeros", network=True),
)}
#: The keys backbones accept (their ``cond`` dict), in table order.
NETWORK_KEYS: tuple[str, ...] = tuple(k for k, rule in CONDITION_KEYS.items() if rule.network)
#: Mask keys, batched and nulled with their token sequence.
_MASKS = {rule.mask: k for k, rule in CONDITION_KEYS.items() if rule.mask}


def condition_key(name: str) -> ConditionKey:
    """The table row of ``name``; ``ValueError`` listing the known keys."""
    if name not in CONDITION_KEYS:
        raise ValueError(f"unknown condition key {name!r}; known: {', '.join(CONDITION_KEYS)}")
    return CONDITION_KEYS[name]


def as_dict(cond: Any) -> dict[str, Any] | None:
    """``cond`` as a dict (a bare label tensor is ``{"labels": cond}``), or None."""
    if cond is None:
        return None
    return dict(cond) if isinstance(cond, Mapping) else {"labels": cond}


def merge_conditions(*conds: Any) -> Any:
    """One condition from parts with distinct keys (a run combining kinds); ``None`` parts are skipped,
    nothing left is ``None``. A key in two parts is a ``ValueError``."""
    out: dict[str, Any] = {}
    for cond in conds:
        for key, value in (as_dict(cond) or {}).items():
            if key in out:
                raise ValueError(f"two parts of a condition both give {key!r}")
            out[key] = value
    return out or None


# ----------------------------------------------------------------------------------------------
# check


def _batch_of(value: Any) -> int | None:
    if isinstance(value, Tensor):
        return value.shape[0] if value.ndim else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def rows_of(cond: Any) -> int | None:
    """How many samples ``cond`` is for (``None``: no per-sample part, e.g. no condition or 0-dim labels);
    ``ValueError`` when its parts disagree."""
    rows = {k: _batch_of(v) for k, v in (as_dict(cond) or {}).items() if v is not None}
    counts = {n for n in rows.values() if n is not None}
    if len(counts) > 1:
        raise ValueError(f"condition parts have different numbers of rows: {rows}")
    return counts.pop() if counts else None


def check_condition(cond: Any, batch: int) -> None:
    """Raise ``ValueError`` unless every part of ``cond`` is a known key with ``batch`` entries (tensors:
    ``shape[0]``; prompts: a list, not one string)."""
    if cond is None:
        return
    if not isinstance(cond, (Mapping, Tensor)):
        raise ValueError(f"cond must be None, a ({batch},) label tensor or a dict, got {type(cond).__name__}")
    for key, value in as_dict(cond).items():  # type: ignore[union-attr]
        condition_key(key)
        if value is None:
            continue
        if isinstance(value, str):
            raise ValueError(f"cond[{key!r}] must be a list of {batch} prompts, not a single string")
        n = _batch_of(value)
        if n is None:
            raise ValueError(f"cond[{key!r}] must be a ({batch}, ...) tensor or a list of {batch} items, "
                             f"got {type(value).__name__}{tuple(value.shape) if isinstance(value, Tensor) else ''}")
        if n != batch:
            raise ValueError(f"cond[{key!r}] has {n} entries for a batch of {batch}")


# ----------------------------------------------------------------------------------------------
# null


def null_condition(cond: Any, null_label: int | None) -> Any:
    """The unconditional counterpart of ``cond``, same structure and batch size (each key's ``null`` rule).

    ``labels`` -> ``null_label`` (a model's ``num_classes``); ``text`` -> ``""`` for each sample (the
    empty prompt a text model is trained on by caption dropout); ``context`` -> the same tokens with an
    all-False ``context_mask`` (no token attended: cross-attention adds nothing, as with no context);
    ``embedding`` -> zeros. ``concat``, ``mask`` and ``control`` are inputs, not conditions to drop: they stay.
    """
    if cond is None:
        return None
    if not isinstance(cond, Mapping):
        return _null_labels(cond, null_label)
    out = dict(cond)
    for key, value in cond.items():
        rule = CONDITION_KEYS.get(key)
        if value is None or rule is None:
            continue
        if rule.null == "null_label":
            out[key] = _null_labels(value, null_label)
        elif rule.null == "empty_prompt":
            if isinstance(value, str):
                raise ValueError(f"cond[{key!r}] must be a list of prompts, not a single string")
            out[key] = [""] * len(value)
        elif rule.null == "unattended":
            assert rule.mask is not None
            out[rule.mask] = torch.zeros(value.shape[:2], dtype=torch.bool, device=value.device)
        elif rule.null == "zeros":
            out[key] = torch.zeros_like(torch.as_tensor(value))
    return out


def _null_labels(labels: Any, null_label: int | None) -> Tensor:
    if null_label is None:
        raise ValueError("cond has class labels but null_label is None: pass the model's num_classes "
                         "(its null label) or a `negative` condition")
    return torch.full_like(torch.as_tensor(labels), null_label)


# ----------------------------------------------------------------------------------------------
# batch


def concat_conditions(a: Any, b: Any) -> Any:
    """``a`` and ``b`` (same structure) batched into one condition: tensors by ``torch.cat``, lists by ``+``.

    Token sequences (``context``) of different lengths are zero-padded to the longer, their masks padded
    with False; a sequence without a mask on one side gets an all-True one. Structures that differ are a
    ``ValueError``.
    """
    if a is None and b is None:
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key, rule in CONDITION_KEYS.items():
            if rule.mask is not None:
                a, b = _with_mask(a, b, key, rule.mask), _with_mask(b, a, key, rule.mask)
        if set(a) != set(b):
            raise ValueError(f"cannot batch conditions with different keys {sorted(a)} and {sorted(b)}")
        out = {k: concat_conditions(a[k], b[k]) for k in a
               if k not in _MASKS and not (k in CONDITION_KEYS and CONDITION_KEYS[k].mask)}
        for key, rule in CONDITION_KEYS.items():
            if rule.mask is not None and key in a:
                out.update(_concat_tokens(a, b, key, rule.mask))
        return out
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.ndim == 0 or a.shape[1:] != b.shape[1:]:
            raise ValueError(f"cannot batch condition tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
        return torch.cat([a, b.to(a.device)])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) + list(b)
    raise ValueError(f"cannot batch conditions of types {type(a).__name__} and {type(b).__name__}")


def _with_mask(d: Mapping[str, Any], other: Mapping[str, Any], key: str, mask: str) -> dict[str, Any]:
    out = dict(d)
    if out.get(key) is not None and out.get(mask) is None and other.get(mask) is not None:
        out[mask] = torch.ones(out[key].shape[:2], dtype=torch.bool, device=out[key].device)
    return out


def _concat_tokens(a: Mapping[str, Any], b: Mapping[str, Any], key: str, mask: str) -> dict[str, Any]:
    ca, cb = a[key], b[key]
    if ca is None or cb is None:
        if ca is not None or cb is not None:
            raise ValueError(f"cannot batch a condition with a {key} and one without")
        return {key: None, **({mask: None} if mask in a else {})}
    if ca.ndim != 3 or cb.ndim != 3 or ca.shape[2] != cb.shape[2]:
        raise ValueError(f"cannot batch {key}s of shapes {tuple(ca.shape)} and {tuple(cb.shape)}")
    length = max(ca.shape[1], cb.shape[1])

    def pad(t: Tensor, value: Any) -> Tensor:
        extra = length - t.shape[1]
        return torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), value)], 1) if extra else t

    out = {key: torch.cat([pad(ca, 0), pad(cb.to(ca), 0)])}
    if mask in a:
        out[mask] = torch.cat([pad(torch.as_tensor(a[mask]).bool(), False),
                               pad(torch.as_tensor(b[mask]).bool().to(ca.device), False)])
    elif ca.shape[1] != cb.shape[1]:
        raise ValueError(f"{key}s of different lengths need a {mask} to be batched")
    return out


# ----------------------------------------------------------------------------------------------
# index


def index_condition(cond: Any, index: Tensor) -> Any:
    """The samples ``index`` (a 1-D index tensor) of ``cond``; a 0-dim tensor part applies to every row."""
    if cond is None:
        return None
    if isinstance(cond, Mapping):
        return {k: index_condition(v, index) for k, v in cond.items()}
    if isinstance(cond, Tensor):
        return cond if cond.ndim == 0 else cond[index.to(cond.device)]
    return [cond[i] for i in index.tolist()]


# ----------------------------------------------------------------------------------------------
# labels, and broadcasting a negative condition


def labels_of(cond: Any) -> Tensor:
    """The ``(B,)`` class labels of ``cond`` (a label tensor or ``cond["labels"]``); ``ValueError`` if none."""
    labels = cond.get("labels") if isinstance(cond, Mapping) else cond
    if labels is None:
        raise ValueError("classifier guidance needs class labels: cond must be a (B,) label tensor or a dict "
                         "with 'labels'")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise ValueError(f"class labels must be a (B,) integer tensor, got dtype {labels.dtype}, "
                         f"shape {tuple(labels.shape)}")
    return labels.long()


def without_labels(cond: Any) -> Any:
    """``cond`` with its class labels removed (``None`` when nothing else is left)."""
    if not isinstance(cond, Mapping):
        return None
    rest = {k: v for k, v in cond.items() if k != "labels"}
    return rest or None


def broadcast_condition(cond: Any, batch: int) -> dict[str, Any]:
    """A condition given for one sample or all (a negative prompt) as a dict with ``batch`` entries per
    key: a string or a list of prompts is ``{"text": ...}``, an int or label tensor ``{"labels": ...}``;
    one entry is repeated ``batch`` times."""
    if isinstance(cond, str) or (isinstance(cond, (list, tuple)) and cond and all(isinstance(p, str) for p in cond)):
        cond = {"text": cond}
    elif isinstance(cond, (int, Tensor)) and not isinstance(cond, bool):
        cond = {"labels": cond}
    if not isinstance(cond, Mapping):
        raise ValueError(f"negative must be a prompt, a list of prompts, labels or a dict condition, "
                         f"got {type(cond).__name__}")
    out: dict[str, Any] = {}
    for key, value in cond.items():
        if isinstance(value, str):
            value = [value]
        if isinstance(value, int) and not isinstance(value, bool):
            value = torch.tensor([value])
        if isinstance(value, Tensor) and value.ndim == 0:
            value = value[None]
        n = _batch_of(value)
        if n == 1 and batch != 1:
            value = list(value) * batch if isinstance(value, (list, tuple)) else value.expand(batch, *value.shape[1:])
        out[key] = value
    check_condition(out, batch)
    return out
