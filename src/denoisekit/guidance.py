"""Guidance as denoiser wrappers: each takes a denoiser and returns one, so every sampler gets it.

==========================  ==================================================================
wrapper                     guided ``x0`` at VE-frame ``(y, sigma)``
==========================  ==================================================================
ClassifierFreeGuidance      ``x0(y | null) + s (x0(y | c) - x0(y | null))``: Ho & Salimans 2022,
                            eq. 6; rescaled as Lin et al. 2023, Sec. 3.4; limited to a sigma
                            interval as Kynkaanniemi et al. 2024
ClassifierGuidance          ``x0(y) + s sigma^2 grad_y log p(c | y, sigma)``: Dhariwal & Nichol
                            2021, Algorithm 2, through Tweedie's formula
CLIPGuidance                ``x0(y) + s sigma^2 grad_y E(y, sigma, prompt)`` with ``E`` a noise-aware
                            CLIP's image-text logit: Nichol et al. 2022 (GLIDE), Sec. 2.4
==========================  ==================================================================

A condition ``cond`` is ``None``, a ``(B,)`` integer label tensor, or a dict of the keys of
:mod:`denoisekit.condition`, whose null, batch and index rules the unconditional branch uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from ._utils import append_dims, as_batch, check_choice
from .condition import (as_dict, broadcast_condition, check_condition, concat_conditions, condition_key,
                        index_condition, labels_of, null_condition, without_labels)
from .denoiser import DenoiserFn, DenoiserWrapper

Classifier = Callable[[Tensor, Tensor], Tensor]  # ``classifier(y, sigma) -> logits (B, K)`` in the VE frame
RescaleSpace = Literal["v", "eps", "x0"]
RESCALE_SPACES = ("v", "eps", "x0")


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance


class ClassifierFreeGuidance(DenoiserWrapper):
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
    - ``scale`` may be a ``(B,)`` tensor, one scale per sample (LCM's guided teacher draws ``w`` per training
      sample); the batch then costs one pass only where every scale is 1.
    """

    def __init__(self, denoiser: DenoiserFn, scale: float | Tensor, null_label: int | None = None, *,
                 negative: Any = None,
                 rescale: float = 0.0, interval: tuple[float, float] | None = None,
                 rescale_space: RescaleSpace = "v"):
        super().__init__(denoiser, require_process=False)  # its maths needs no process: the oracle works too
        per_sample = isinstance(scale, Tensor) and scale.ndim > 0
        if not (bool(torch.isfinite(scale).all()) if per_sample else math.isfinite(scale)):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi of Lin et al. 2023) must be in [0, 1], got {rescale}")
        check_choice("rescale space", rescale_space, RESCALE_SPACES)
        if interval is not None:
            if len(interval) != 2 or not 0.0 <= interval[0] < interval[1]:
                raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, got {interval}")
            interval = (float(interval[0]), float(interval[1]))
        self.scale: float | Tensor = scale.reshape(-1) if per_sample else float(scale)
        self.null_label = null_label
        self.negative, self.rescale, self.rescale_space = negative, float(rescale), rescale_space
        self.interval = interval

    def unconditional(self, cond: Any, batch: int) -> Any:
        """The condition of the unconditional branch: :func:`null_condition`, overridden by ``negative``."""
        if self.negative is None:
            return null_condition(cond, self.null_label)
        neg = broadcast_condition(self.negative, batch)
        base = as_dict(cond) or {}
        masks = {condition_key(k).mask for k in neg}  # a new token sequence brings its own mask
        replaced = set(neg) | (masks - {None})
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

    def _is(self, value: float) -> bool:
        """Whether every sample's scale is ``value``."""
        return bool((self.scale == value).all()) if isinstance(self.scale, Tensor) else self.scale == value

    def _scale(self, like: Tensor, idx: Tensor | None = None) -> float | Tensor:
        """The scale to multiply ``like`` by: the float, or the samples' scales (those of ``idx``) broadcast."""
        if not isinstance(self.scale, Tensor):
            return self.scale
        s = self.scale.to(like)
        return append_dims(s if idx is None else s[idx], like.ndim)

    def forward(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        if cond is None or self._is(1):
            return self.inner(y, sigma, cond)
        b = y.shape[0]
        if isinstance(self.scale, Tensor) and self.scale.shape[0] != b:
            raise ValueError(f"{self.scale.shape[0]} guidance scales for a batch of {b}")
        if isinstance(cond, int) or (isinstance(cond, Tensor) and cond.ndim == 0):
            cond = torch.as_tensor(cond, device=y.device).expand(b)
        check_condition(cond, b)
        s = as_batch(sigma, y)
        on = self.guided(s)
        if not bool(on.any()):
            return self.inner(y, sigma, cond)
        uncond = self.unconditional(cond, b)
        if bool(on.all()):
            if self._is(0) and self.rescale == 0:
                return self.inner(y, sigma, uncond)
            out_c, out_u = self.inner(torch.cat([y, y]), torch.cat([s, s]), concat_conditions(cond, uncond)).split(b)
            return self.combine(out_c, out_u, y, s)
        idx = on.nonzero().squeeze(1)
        out = self.inner(torch.cat([y, y[idx]]), torch.cat([s, s[idx]]),
                         concat_conditions(cond, index_condition(uncond, idx)))
        out_c, out_u = out[:b], out[b:]
        return out_c.index_copy(0, idx, self.combine(out_c[idx], out_u, y[idx], s[idx], self._scale(y, idx)))

    def combine(self, out_c: Tensor, out_u: Tensor, y: Tensor, sigma: Tensor,
                scale: float | Tensor | None = None) -> Tensor:
        """Guided x0 from the conditional and unconditional x0 at ``(y, sigma)`` (``sigma`` ``(B,)``); ``scale``: a
        float or one broadcastable to them (default: this guidance's, for the whole batch)."""
        cfg = out_u + (self._scale(y) if scale is None else scale) * (out_c - out_u)
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


class GradientGuidance(DenoiserWrapper):
    """``x0 = x0(y) + s sigma^2 grad_y log r(c | y, sigma)``: the Tweedie correction that classifier and CLIP
    guidance share. Subclasses say what a batch is guided toward (:meth:`target`, from ``cond``), the
    per-sample ``log r`` (:meth:`log_ratio`, ``(B,)``) and what the wrapped denoiser gets when it does not
    take that condition (:meth:`without_target`). ``conditional``: the wrapped denoiser takes it too (both
    guidances then add). The gradient is computed with autograd enabled locally, so sampling under
    ``torch.no_grad()`` works."""

    def __init__(self, denoiser: DenoiserFn, scale: float, *, conditional: bool):
        super().__init__(denoiser, require_process=False)
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.scale, self.conditional = float(scale), conditional

    def target(self, cond: Any, batch: int) -> Any:
        raise NotImplementedError

    def log_ratio(self, y: Tensor, sigma: Tensor, target: Any) -> Tensor:
        raise NotImplementedError

    def without_target(self, cond: Any) -> Any:
        raise NotImplementedError

    def grad(self, y: Tensor, sigma: Tensor, target: Any) -> Tensor:
        """``grad_y log r(target | y, sigma)`` per sample, shape of ``y``."""
        with torch.enable_grad():
            y_in = y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_ratio(y_in, sigma, target).sum(), y_in)
        return grad

    def forward(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        target = self.target(cond, y.shape[0])
        s = as_batch(sigma, y)
        x0 = self.inner(y, sigma, cond if self.conditional else self.without_target(cond))
        if self.scale == 0:
            return x0
        return x0 + self.scale * append_dims(s**2, y.ndim).to(x0) * self.grad(y, s, target).to(x0)


class ClassifierGuidance(GradientGuidance):
    """``x0 = x0(y) + s sigma^2 grad_y log p(c | y, sigma)``: Dhariwal & Nichol 2021, Algorithm 2, in the
    VE frame.

    Tweedie's formula gives ``E[x0 | y, c] = y + sigma^2 grad_y log p(y | c)`` and Bayes
    ``grad log p(y | c) = grad log p(y) + grad log p(c | y)``, so with the exact classifier ``s = 1`` is
    the class-conditional denoiser. (Their ``eps - sqrt(1 - alpha_bar) s grad_x log p`` is this: ``x0 =
    y - sigma eps`` and ``grad_x = grad_y / alpha``.) ``classifier(y, sigma) -> logits (B, K)`` is a
    noisy classifier in the VE frame (e.g. :class:`~denoisekit.models.classifier.NoisyClassifier`);
    labels come from ``cond`` (a label tensor or ``cond["labels"]``).

    ``conditional``: the wrapped denoiser takes the labels too (a class-conditional model, or a
    :class:`ClassifierFreeGuidance` around one: both guidances then add); otherwise the labels are
    removed from the ``cond`` it gets.
    """

    def __init__(self, denoiser: DenoiserFn, classifier: Classifier, scale: float, *, conditional: bool = False):
        super().__init__(denoiser, scale, conditional=conditional)
        self.classifier = classifier

    def target(self, cond: Any, batch: int) -> Tensor:
        labels = labels_of(cond)
        if labels.shape != (batch,):
            raise ValueError(f"expected ({batch},) class labels, got shape {tuple(labels.shape)}")
        return labels

    def without_target(self, cond: Any) -> Any:
        return without_labels(cond)

    def log_ratio(self, y: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """``log p(labels | y, sigma)`` per sample."""
        logits = self.classifier(y, sigma)
        if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
            raise ValueError(f"classifier must return ({y.shape[0]}, K) logits, got shape {tuple(logits.shape)}")
        k = logits.shape[1]
        if bool(((labels < 0) | (labels >= k)).any()):
            bad = sorted(set(labels[(labels < 0) | (labels >= k)].tolist()))
            raise ValueError(f"labels must be in 0..{k - 1} for a {k}-class classifier, got {bad}")
        return torch.log_softmax(logits, dim=1).gather(1, labels.to(logits.device)[:, None])[:, 0]


#: ``energy(y, sigma, prompts) -> (B,)`` image-text similarity of VE-frame ``y`` at ``sigma`` (a noise-aware CLIP).
TextEnergy = Callable[[Tensor, Tensor, list[str]], Tensor]


class CLIPGuidance(GradientGuidance):
    """``x0 = x0(y) + s sigma^2 grad_y E(y, sigma, c)``: CLIP guidance (Nichol et al. 2022, "GLIDE", Sec. 2.4) in
    the VE frame.

    GLIDE shifts the reverse-process mean by ``s Sigma grad_x (f(x_t) . g(c))``, the gradient of a noise-aware
    CLIP's image-caption similarity; through Tweedie's formula that is this correction of ``x0``, exactly as
    :class:`ClassifierGuidance` with the similarity in place of ``log p(c | y)``
    (:class:`~denoisekit.eval.clip.CLIPEnergy` gives the CLIP's logit ``exp(t) cos``, GLIDE's dot product of
    normalised embeddings times the learned inverse temperature). Prompts come from ``cond["text"]``.
    ``conditional``: the wrapped denoiser takes the prompts too (a text model, or CFG around one: both guidances
    add); otherwise they are removed from the ``cond`` it gets (an unconditional model).
    """

    def __init__(self, denoiser: DenoiserFn, energy: TextEnergy, scale: float, *, conditional: bool = True):
        super().__init__(denoiser, scale, conditional=conditional)
        self.energy = energy

    def target(self, cond: Any, batch: int) -> list[str]:
        prompts = cond.get("text") if isinstance(cond, Mapping) else None
        if prompts is None or len(prompts) != batch:
            raise ValueError(f"CLIP guidance needs cond['text'] with {batch} prompts")
        return list(prompts)

    def without_target(self, cond: Any) -> Any:
        return {k: v for k, v in cond.items() if k != "text"} or None

    def log_ratio(self, y: Tensor, sigma: Tensor, prompts: list[str]) -> Tensor:
        """The energy ``E(y, sigma, prompts)`` per sample."""
        e = self.energy(y, sigma, prompts)
        if e.shape != (y.shape[0],):
            raise ValueError(f"energy must return ({y.shape[0]},) similarities, got shape {tuple(e.shape)}")
        return e
