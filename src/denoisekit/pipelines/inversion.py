"""Inverting a real image into a model's noise: DDIM inversion, with or without guidance, and null-text inversion.

- **DDIM inversion** (Song et al. 2021a, Sec. 4.3; Dhariwal & Nichol 2021, App. F): the deterministic
  DDIM step run up the grid from the image, ``y' = x0 + (sigma' / sigma) (y - x0)``
  (:func:`~denoisekit.samplers.sample_ddim_inversion`), optionally through classifier-free guidance. DDIM
  sampling back down the same grid returns the image up to the two Euler discretisations, which cancel as
  the steps grow (the image is taken as the point at the grid's lowest level, where the reconstruction
  stops: a first step from 0 would evaluate the denoiser where it is undefined).
- **Null-text inversion** (Mokady et al. 2023, Algorithm 1): guided sampling (scale ``w`` > 1) from a
  ``w = 1`` inversion drifts off the inverted trajectory (the pivot), so for every step ``t`` the null
  condition's token embeddings ``phi_t`` are optimised (Adam, ``inner_steps`` iterations, lr decaying
  ``lr (1 - i / (2 N))``, early stop once the loss is below ``tol + tol_step i``; the official code has 10, 1e-2,
  1e-5 and 2e-5) to minimise ``|y*_{t-1} - step(y_t, phi_t, C, w)|^2``,
  then the step is taken with the final ``phi_t``, which also starts step ``t - 1``. The loss is measured in
  the variance-preserving frame ``y / sqrt(1 + sigma^2)`` (the paper's latents), so one tolerance fits every
  level. The null embedding is the empty prompt's (``{"context": E(""), "context_mask": all True}``: the
  ``context`` key of the condition schema, which is exactly what the network computes for ``text: [""]``),
  so nothing in the network changes. Each step's null is a copy: Adam updates its tensor in place, and a null
  shared between steps would end as the last step's everywhere (a test holds this).

All in the VE frame of the denoiser contract; grids are decreasing (the sampling direction) and end at their
lowest level ``> 0`` (:func:`inversion_grid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..condition import concat_conditions, null_condition
from ..denoiser import DenoiserFn, DenoiserWrapper
from ..generation.model import LoadedModel
from ..models.text import TextConditioned
from ..samplers import sample_ddim_inversion
from ..schedules import get_sigmas


@dataclass(frozen=True)
class Inversion:
    """A DDIM inversion: ``latent`` ``(B, C, H, W)`` at ``sigmas[0]``; ``trajectory[k]`` the point at
    ``sigmas[k]`` (``trajectory[-1]`` the image); the condition and scale it was inverted with; ``nulls``: the
    null condition of each sampling step (null-text inversion), else None."""

    latent: Tensor
    trajectory: list[Tensor]
    sigmas: Tensor
    cond: Any
    uncond: Any
    scale: float
    nulls: list[Any] | None = None


def inversion_grid(model: LoadedModel, steps: int, schedule: str | None = None) -> Tensor:
    """The decreasing grid of ``steps`` DDIM steps (``steps + 1`` levels) of the model's schedule, without
    the final 0: inversion climbs it from its last level, reconstruction comes down to it."""
    if steps < 1:
        raise ValueError(f"inversion needs at least 1 step, got {steps}")
    return get_sigmas(model.process, schedule or model.defaults.schedule, steps + 1)[:-1]


def text_network(model: LoadedModel) -> TextConditioned | None:
    """The network of a text model that encodes its prompts (None for other models)."""
    modules = getattr(model.denoiser, "modules", None)
    return next((m for m in modules() if isinstance(m, TextConditioned)), None) if callable(modules) else None


def prompt_condition(model: LoadedModel, prompts: Sequence[str]) -> dict[str, Tensor]:
    """``{"context", "context_mask"}`` of ``prompts`` as the model's text encoder gives them (the condition a
    ``{"text": prompts}`` becomes inside the network); ``ValueError`` for a model without one."""
    net = text_network(model)
    if net is None:
        raise ValueError(f"prompts need a text model; this one is conditioned on {model.kind!r}")
    with torch.no_grad():
        context, mask = net.encoder.encode(list(prompts), device=model.device)
    return {"context": context.detach(), "context_mask": mask}


def model_conditions(model: LoadedModel, prompts: Sequence[str] | None = None,
                     labels: Tensor | None = None, n: int = 1) -> tuple[Any, Any]:
    """``(cond, uncond)`` for ``n`` images: encoded prompts and the empty prompt's tokens (a text model),
    labels and the null label (a class model), or ``(None, None)``."""
    if model.kind == "text":
        prompts = list(prompts) if prompts else [""] * n
        if len(prompts) == 1 and n > 1:
            prompts = prompts * n
        return prompt_condition(model, prompts), prompt_condition(model, [""] * len(prompts))
    if prompts:
        raise ValueError(f"--prompt needs a text model; this one is conditioned on {model.kind!r}")
    if labels is not None:
        return labels, null_condition(labels, model.null_label)
    return None, None


def guided_x0(denoiser: DenoiserFn, y: Tensor, sigma: float, cond: Any, uncond: Any, scale: float) -> Tensor:
    """Classifier-free guidance ``x0(u) + w (x0(c) - x0(u))`` (Ho & Salimans 2022, eq. 6) with an explicit
    unconditional condition ``uncond``, both halves in one batch; ``w = 1`` (or no condition) is one pass."""
    s = torch.full((y.shape[0],), sigma, dtype=torch.float64, device=y.device)
    if scale == 1 or cond is None:
        return denoiser(y, s, cond)
    b = y.shape[0]
    out_c, out_u = denoiser(torch.cat([y, y]), torch.cat([s, s]), concat_conditions(cond, uncond)).split(b)
    return out_u + scale * (out_c - out_u)


class _Guided(DenoiserWrapper):
    """A denoiser with fixed guidance, for the sampler the inversion reuses (its process forwarded)."""

    def __init__(self, denoiser: DenoiserFn, uncond: Any, scale: float):
        super().__init__(denoiser, require_process=False)
        self.uncond, self.scale = uncond, scale

    def forward(self, y: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return guided_x0(self.inner, y, float(sigma[0]), cond, self.uncond, self.scale)


@torch.no_grad()
def ddim_invert(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, cond: Any = None, uncond: Any = None, *,
                scale: float = 1.0) -> Inversion:
    """DDIM inversion of images ``x`` (VE frame at ``sigmas[-1]``) up the decreasing grid ``sigmas`` (no 0),
    guided at ``scale`` against ``uncond`` (module docstring)."""
    up = sigmas.flip(0)
    points = [x]
    sample_ddim_inversion(_Guided(denoiser, uncond, scale), x, up, cond=cond,  # type: ignore[arg-type]
                          callback=lambda info: points.append(info["x"]))
    return Inversion(points[-1], points[::-1], sigmas, cond, uncond, float(scale))


@torch.no_grad()
def reconstruct(denoiser: DenoiserFn, inversion: Inversion, *, scale: float | None = None) -> Tensor:
    """DDIM sampling from ``inversion.latent`` down its grid with its condition, at ``scale`` (default the
    inversion's) against its per-step null conditions (null-text inversion) or its ``uncond``."""
    w = inversion.scale if scale is None else float(scale)
    s = inversion.sigmas.tolist()
    y = inversion.latent
    for i in range(len(s) - 1):
        uncond = inversion.nulls[i] if inversion.nulls is not None else inversion.uncond
        x0 = guided_x0(denoiser, y, s[i], inversion.cond, uncond, w)
        y = x0 + (s[i + 1] / s[i]) * (y - x0)
    return y


def null_text_inversion(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, cond: dict[str, Tensor],
                        null: dict[str, Tensor], *, scale: float, inner_steps: int = 10, lr: float = 1e-2,
                        tol: float = 1e-5, tol_step: float = 2e-5) -> Inversion:
    """Null-text inversion (Mokady et al. 2023, Algorithm 1; module docstring): the pivot is the ``w = 1``
    DDIM inversion under ``cond``; ``null`` (``{"context", "context_mask"}``, the empty prompt's tokens) is
    optimised per step so that sampling at ``scale`` follows the pivot. Returns the pivot's latent with the
    per-step nulls, which :func:`reconstruct` uses."""
    if "context" not in null:
        raise ValueError("null-text inversion optimises the null condition's 'context' tokens: a text model's")
    if inner_steps < 0 or not lr > 0:
        raise ValueError(f"need inner_steps >= 0 and lr > 0, got {inner_steps}, {lr}")
    pivot = ddim_invert(denoiser, x, sigmas, cond, null, scale=1.0)
    s, n = sigmas.tolist(), len(sigmas) - 1
    context = null["context"].detach().clone()
    y, nulls = pivot.latent, []
    for i in range(n):
        sig, nxt = s[i], s[i + 1]
        level = torch.full((y.shape[0],), sig, dtype=torch.float64, device=y.device)
        target, ratio, frame = pivot.trajectory[i + 1], nxt / sig, 1.0 / (1.0 + nxt**2)
        with torch.no_grad():
            x0_c = denoiser(y, level, cond)

        def step(ctx: Tensor, y: Tensor = y, level: Tensor = level, x0_c: Tensor = x0_c, ratio: float = ratio) -> Tensor:
            x0_u = denoiser(y, level, {**null, "context": ctx})
            x0 = x0_u + scale * (x0_c - x0_u)
            return x0 + ratio * (y - x0)

        context = context.detach().clone().requires_grad_(True)  # Adam updates in place: never a stored null
        optimizer = torch.optim.Adam([context], lr=lr * (1 - i / (2 * n)))
        for _ in range(inner_steps):
            with torch.enable_grad():
                loss = ((step(context) - target) ** 2).flatten(1).mean(1) * frame  # per image
                if float(loss.detach().max()) < tol + tol_step * i:
                    break
                (grad,) = torch.autograd.grad(loss.sum(), [context])
            context.grad = grad
            optimizer.step()
        context = context.detach()
        nulls.append({**null, "context": context})
        with torch.no_grad():
            y = step(context)
    return Inversion(pivot.latent, pivot.trajectory, sigmas, cond, null, float(scale), nulls)

