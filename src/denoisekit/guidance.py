"""Guidance as denoiser wrappers: each takes a denoiser and returns one, so every sampler gets it.

==========================  ==================================================================
wrapper                     guided ``x0`` at VE-frame ``(y, sigma)``
==========================  ==================================================================
ClassifierFreeGuidance      ``x0(y | null) + s (x0(y | c) - x0(y | null))``: Ho & Salimans 2022,
                            eq. 6; rescaled as Lin et al. 2023, Sec. 3.4; limited to a sigma
                            interval as Kynkaanniemi et al. 2024
ClassifierGuidance          ``x0(y) + s sigma^2 grad_y log p(c | y, sigma)``: Dhariwal & Nichol
                            2021, Algorithm 2, through Tweedie's formula
==========================  ==================================================================

A condition ``cond`` is ``None``, a ``(B,)`` integer label tensor, or a dict with keys among
``labels`` (B,), ``text`` (a list of B prompts), ``context`` (B, L, D), ``context_mask`` (B, L) and
``concat`` (B, C, H, W) (see :mod:`denoisekit.models.layers`). :func:`null_condition` and
:func:`concat_conditions` are the one place that knows how to drop and batch them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from ._utils import append_dims, as_batch, check_choice
from .samplers._common import DenoiserFn

Classifier = Callable[[Tensor, Tensor], Tensor]  # ``classifier(y, sigma) -> logits (B, K)`` in the VE frame
RescaleSpace = Literal["v", "eps", "x0"]
RESCALE_SPACES = ("v", "eps", "x0")


# ----------------------------------------------------------------------------------------------
# Condition plumbing


def _batch_of(value: Any) -> int | None:
    if isinstance(value, Tensor):
        return value.shape[0] if value.ndim else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def check_condition(cond: Any, batch: int) -> None:
    """Raise ``ValueError`` unless every part of ``cond`` has ``batch`` entries (tensors: ``shape[0]``)."""
    if cond is None:
        return
    if not isinstance(cond, (Mapping, Tensor)):
        raise ValueError(f"cond must be None, a ({batch},) label tensor or a dict, got {type(cond).__name__}")
    parts = cond.items() if isinstance(cond, Mapping) else [("labels", cond)]
    for key, value in parts:
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


def null_condition(cond: Any, null_label: int | None) -> Any:
    """The unconditional counterpart of ``cond``, same structure and batch size.

    ``labels`` -> ``null_label`` (a model's ``num_classes``); ``text`` -> ``""`` for each sample (the
    empty prompt a text model is trained on by caption dropout); ``context`` -> the same tokens with an
    all-False ``context_mask`` (no token attended: cross-attention adds nothing, as with no context).
    ``concat`` and any other key is an input (an image condition), not a condition to drop: it stays.
    """
    if cond is None:
        return None
    if not isinstance(cond, Mapping):
        return _null_labels(cond, null_label)
    out = dict(cond)
    for key, value in cond.items():
        if value is None:
            continue
        if key == "labels":
            out[key] = _null_labels(value, null_label)
        elif key == "text":
            if isinstance(value, str):
                raise ValueError("cond['text'] must be a list of prompts, not a single string")
            out[key] = [""] * len(value)
        elif key == "context":
            out["context_mask"] = torch.zeros(value.shape[:2], dtype=torch.bool, device=value.device)
    return out


def _null_labels(labels: Any, null_label: int | None) -> Tensor:
    if null_label is None:
        raise ValueError("cond has class labels but null_label is None: pass the model's num_classes "
                         "(its null label) or a `negative` condition")
    return torch.full_like(torch.as_tensor(labels), null_label)


def concat_conditions(a: Any, b: Any) -> Any:
    """``a`` and ``b`` (same structure) batched into one condition: tensors by ``torch.cat``, lists by ``+``.

    Token contexts of different lengths are zero-padded to the longer, their masks padded with False; a
    ``context`` without a mask on one side gets an all-True one. Structures that differ are a ``ValueError``.
    """
    if a is None and b is None:
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        a, b = _with_masks(a, b), _with_masks(b, a)
        if set(a) != set(b):
            raise ValueError(f"cannot batch conditions with different keys {sorted(a)} and {sorted(b)}")
        out = {k: concat_conditions(a[k], b[k]) for k in a if k not in ("context", "context_mask")}
        if "context" in a:
            out.update(_concat_context(a, b))
        return out
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.ndim == 0 or a.shape[1:] != b.shape[1:]:
            raise ValueError(f"cannot batch condition tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
        return torch.cat([a, b.to(a.device)])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) + list(b)
    raise ValueError(f"cannot batch conditions of types {type(a).__name__} and {type(b).__name__}")


def _with_masks(d: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if out.get("context") is not None and out.get("context_mask") is None and other.get("context_mask") is not None:
        out["context_mask"] = torch.ones(out["context"].shape[:2], dtype=torch.bool, device=out["context"].device)
    return out


def _concat_context(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    ca, cb = a["context"], b["context"]
    if ca is None or cb is None:
        if ca is not None or cb is not None:
            raise ValueError("cannot batch a condition with a context and one without")
        return {"context": None, **({"context_mask": None} if "context_mask" in a else {})}
    if ca.ndim != 3 or cb.ndim != 3 or ca.shape[2] != cb.shape[2]:
        raise ValueError(f"cannot batch contexts of shapes {tuple(ca.shape)} and {tuple(cb.shape)}")
    length = max(ca.shape[1], cb.shape[1])

    def pad(t: Tensor, value: Any) -> Tensor:
        extra = length - t.shape[1]
        return torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), value)], 1) if extra else t

    out = {"context": torch.cat([pad(ca, 0), pad(cb.to(ca), 0)])}
    if "context_mask" in a:
        out["context_mask"] = torch.cat([pad(torch.as_tensor(a["context_mask"]).bool(), False),
                                         pad(torch.as_tensor(b["context_mask"]).bool().to(ca.device), False)])
    elif ca.shape[1] != cb.shape[1]:
        raise ValueError("contexts of different lengths need a context_mask to be batched")
    return out


def index_condition(cond: Any, index: Tensor) -> Any:
    """The samples ``index`` (a 1-D index tensor) of ``cond``."""
    if cond is None:
        return None
    if isinstance(cond, Mapping):
        return {k: index_condition(v, index) for k, v in cond.items()}
    if isinstance(cond, Tensor):
        return cond[index.to(cond.device)]
    return [cond[i] for i in index.tolist()]


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


def _broadcast(negative: Any, batch: int) -> dict[str, Any]:
    """A negative condition as a dict with ``batch`` entries per key: a string or a list of prompts is
    ``{"text": ...}``, an int or label tensor ``{"labels": ...}``; one entry is repeated ``batch`` times."""
    if isinstance(negative, str) or (isinstance(negative, (list, tuple)) and negative
                                     and all(isinstance(p, str) for p in negative)):
        negative = {"text": negative}
    elif isinstance(negative, (int, Tensor)) and not isinstance(negative, bool):
        negative = {"labels": negative}
    if not isinstance(negative, Mapping):
        raise ValueError(f"negative must be a prompt, a list of prompts, labels or a dict condition, "
                         f"got {type(negative).__name__}")
    out: dict[str, Any] = {}
    for key, value in negative.items():
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


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance


class ClassifierFreeGuidance:
    """``x0 = x0(y | u) + s (x0(y | c) - x0(y | u))``, ``u`` the null (or a negative) condition:
    Ho & Salimans 2022, eq. 6, on the denoiser.

    Guidance in x0 is eps-space CFG: at fixed ``(y, sigma)`` every parameterisation (``eps = (y - x0) /
    sigma``, v, score, flow velocity) is ``a y + b x0`` with ``a, b`` independent of the condition, and
    the weights ``1 - s`` and ``s`` sum to one, so combining the outputs and converting commute. Their
    ``w`` is ``s - 1``. ``s = 1`` is the conditional model and costs one pass; otherwise the conditional
    and unconditional halves go through the denoiser as one batch of ``2B``.

    - ``negative``: a condition for the unconditional branch instead of the null one (negative
      prompts): a dict (its keys replace the null condition's; keys it lacks are nulled as usual), a
      prompt string or list of prompts (``{"text": ...}``), or labels. One entry is repeated for the batch.
    - ``rescale``: phi of Lin et al. 2023, Sec. 3.4 (eqs. 15-18): the guided output is rescaled so its
      per-sample std matches the conditional output's, then mixed ``phi * rescaled + (1 - phi) * cfg``.
      The std is taken of the network output; Lin et al.'s models predict v, so ``rescale_space="v"``
      (default) uses ``v = alpha_n eps - sigma_n x0`` of the variance-preserving frame, which in the VE
      frame is ``(y - (1 + sigma^2) x0) / (sigma sqrt(1 + sigma^2))`` for every process (it depends on
      the SNR only). This is not x0's std: v contains y. ``"eps"`` matches diffusers' ``guidance_rescale``
      on an eps model; ``"x0"`` rescales x0 itself.
    - ``interval=(sigma_lo, sigma_hi)``: guide only where ``sigma_lo < sigma <= sigma_hi`` (VE-frame
      sigma, per sample), else return the conditional output; Kynkaanniemi et al. 2024. Samples outside
      cost one pass: a batch entirely outside is one conditional call of ``B``.
    """

    def __init__(self, denoiser: DenoiserFn, scale: float, null_label: int | None = None, *, negative: Any = None,
                 rescale: float = 0.0, interval: tuple[float, float] | None = None,
                 rescale_space: RescaleSpace = "v"):
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi of Lin et al. 2023) must be in [0, 1], got {rescale}")
        check_choice("rescale space", rescale_space, RESCALE_SPACES)
        if interval is not None:
            if len(interval) != 2 or not 0.0 <= interval[0] < interval[1]:
                raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, got {interval}")
            interval = (float(interval[0]), float(interval[1]))
        self.denoiser, self.scale, self.null_label = denoiser, float(scale), null_label
        self.negative, self.rescale, self.rescale_space = negative, float(rescale), rescale_space
        self.interval = interval
        self.process = getattr(denoiser, "process", None)

    def unconditional(self, cond: Any, batch: int) -> Any:
        """The condition of the unconditional branch: :func:`null_condition`, overridden by ``negative``."""
        if self.negative is None:
            return null_condition(cond, self.null_label)
        neg = _broadcast(self.negative, batch)
        base = dict(cond) if isinstance(cond, Mapping) else {"labels": cond}
        replaced = set(neg) | ({"context_mask"} if "context" in neg else set())  # a new context brings its mask
        out = {**null_condition({k: v for k, v in base.items() if k not in replaced}, self.null_label), **neg}
        if isinstance(cond, Mapping):
            return out
        if set(out) != {"labels"}:
            raise ValueError(f"cond is a label tensor but negative has keys {sorted(neg)}")
        return out["labels"]

    def guided(self, sigma: Tensor) -> Tensor:
        """``(B,)`` bool: where guidance applies (everywhere without an ``interval``)."""
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.interval
        return (sigma > lo) & (sigma <= hi)

    def __call__(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        if cond is None or self.scale == 1:
            return self.denoiser(y, sigma, cond)
        b = y.shape[0]
        if isinstance(cond, int) or (isinstance(cond, Tensor) and cond.ndim == 0):
            cond = torch.as_tensor(cond, device=y.device).expand(b)
        check_condition(cond, b)
        s = as_batch(sigma, y)
        on = self.guided(s)
        if not bool(on.any()):
            return self.denoiser(y, sigma, cond)
        uncond = self.unconditional(cond, b)
        if bool(on.all()):
            if self.scale == 0 and self.rescale == 0:
                return self.denoiser(y, sigma, uncond)
            out_c, out_u = self.denoiser(torch.cat([y, y]), torch.cat([s, s]), concat_conditions(cond, uncond)).split(b)
            return self.combine(out_c, out_u, y, s)
        idx = on.nonzero().squeeze(1)
        out = self.denoiser(torch.cat([y, y[idx]]), torch.cat([s, s[idx]]),
                            concat_conditions(cond, index_condition(uncond, idx)))
        out_c, out_u = out[:b], out[b:]
        return out_c.index_copy(0, idx, self.combine(out_c[idx], out_u, y[idx], s[idx]))

    def combine(self, out_c: Tensor, out_u: Tensor, y: Tensor, sigma: Tensor) -> Tensor:
        """Guided x0 from the conditional and unconditional x0 at ``(y, sigma)`` (``sigma`` ``(B,)``)."""
        cfg = out_u + self.scale * (out_c - out_u)
        if self.rescale == 0:
            return cfg
        a, k = _affine(self.rescale_space, sigma, y)  # u = a y + k x0: the space the std is taken in
        u_c, u_cfg = a * y + k * out_c, a * y + k * cfg
        std_c, std_cfg = u_c.flatten(1).std(1), u_cfg.flatten(1).std(1)
        ratio = torch.where(std_cfg > 0, std_c / torch.where(std_cfg > 0, std_cfg, 1), 1)
        factor = append_dims(self.rescale * ratio + (1 - self.rescale), y.ndim)
        out = (factor * u_cfg - a * y) / k
        if self.rescale_space != "x0":  # v and eps do not exist at sigma = 0: leave those samples unscaled
            out = torch.where(append_dims(sigma > 0, y.ndim), out, cfg)
        return out


def _affine(space: str, sigma: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, k)`` with ``u = a y + k x0`` the ``space`` prediction at VE noise ``sigma``, broadcastable to y."""
    s = torch.where(sigma > 0, sigma, 1.0)
    if space == "x0":
        a, k = torch.zeros_like(s), torch.ones_like(s)
    elif space == "eps":
        a, k = 1 / s, -1 / s
    else:  # v = (y - (1 + s^2) x0) / (s r), r = sqrt(1 + s^2): alpha_n = 1/r, sigma_n = s/r, eps = (y - x0)/s
        r = torch.sqrt(1 + s**2)
        a, k = 1 / (s * r), -r / s
    return append_dims(a.to(y), y.ndim), append_dims(k.to(y), y.ndim)


# ----------------------------------------------------------------------------------------------
# Classifier guidance


class ClassifierGuidance:
    """``x0 = x0(y) + s sigma^2 grad_y log p(c | y, sigma)``: Dhariwal & Nichol 2021, Algorithm 2, in the
    VE frame.

    Tweedie's formula gives ``E[x0 | y, c] = y + sigma^2 grad_y log p(y | c)`` and Bayes
    ``grad log p(y | c) = grad log p(y) + grad log p(c | y)``, so with the exact classifier ``s = 1`` is
    the class-conditional denoiser. (Their ``eps - sqrt(1 - alpha_bar) s grad_x log p`` is this: ``x0 =
    y - sigma eps`` and ``grad_x = grad_y / alpha``.) ``classifier(y, sigma) -> logits (B, K)`` is a
    noisy classifier in the VE frame (e.g. :class:`~denoisekit.models.classifier.NoisyClassifier`);
    labels come from ``cond`` (a label tensor or ``cond["labels"]``). The gradient is computed with
    autograd enabled locally, so sampling under ``torch.no_grad()`` works.

    ``conditional``: the wrapped denoiser takes the labels too (a class-conditional model, or a
    :class:`ClassifierFreeGuidance` around one: both guidances then add); otherwise the labels are
    removed from the ``cond`` it gets.
    """

    def __init__(self, denoiser: DenoiserFn, classifier: Classifier, scale: float, *, conditional: bool = False):
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.denoiser, self.classifier, self.scale, self.conditional = denoiser, classifier, float(scale), conditional
        self.process = getattr(denoiser, "process", None)

    def log_prob_grad(self, y: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """``grad_y log p(labels | y, sigma)`` per sample, shape of ``y``."""
        with torch.enable_grad():
            y_in = y.detach().requires_grad_(True)
            logits = self.classifier(y_in, sigma)
            if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
                raise ValueError(f"classifier must return ({y.shape[0]}, K) logits, got shape {tuple(logits.shape)}")
            k = logits.shape[1]
            if bool(((labels < 0) | (labels >= k)).any()):
                bad = sorted(set(labels[(labels < 0) | (labels >= k)].tolist()))
                raise ValueError(f"labels must be in 0..{k - 1} for a {k}-class classifier, got {bad}")
            log_p = torch.log_softmax(logits, dim=1).gather(1, labels.to(logits.device)[:, None])
            (grad,) = torch.autograd.grad(log_p.sum(), y_in)
        return grad

    def __call__(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        labels = labels_of(cond)
        if labels.shape != (y.shape[0],):
            raise ValueError(f"expected ({y.shape[0]},) class labels, got shape {tuple(labels.shape)}")
        s = as_batch(sigma, y)
        x0 = self.denoiser(y, sigma, cond if self.conditional else without_labels(cond))
        if self.scale == 0:
            return x0
        grad = self.log_prob_grad(y, s, labels)
        return x0 + self.scale * append_dims(s**2, y.ndim).to(x0) * grad.to(x0)
