"""Joint denoising: several views of one canvas denoised together, as one denoiser over the canvas.

:class:`JointDenoiser` is ``(y_canvas, sigma, cond) -> x0_canvas`` in the VE frame: each *term* (a
:class:`~denoisekit.pipelines.views.View`, its condition and a canvas weight) is projected out of ``y``,
denoised by the model, and the terms are averaged back in the canonical space, weighted by how many
terms cover each pixel. Because it is a denoiser, every sampler of :mod:`denoisekit.samplers` runs it.

- **MultiDiffusion** (Bar-Tal et al. 2023, eq. 5): windows of a wider canvas averaged at every step;
  region prompts are terms whose weight is the region's mask (Sec. 3.2); a loop canvas wraps windows
  round its width (360-degree panoramas).
- **SyncDiffusion** (Lee et al. 2023, Algorithm 1): every window's predicted x0 is pulled toward an
  anchor window's (window 0, stop-gradient) by the gradient of a perceptual distance
  ``L = ||f(x0_i) - f(x0_anchor)||^2`` through the denoiser; ``f`` is the project's feature network
  where the paper uses LPIPS. The paper moves ``x_t`` by ``-w grad L`` before the step; here the same
  gradient enters as guidance does (``x0 - w sigma^2 grad_y L``, Tweedie, as classifier guidance), so
  it stays a denoiser wrapper.
- **SyncTweedies** (Kim et al. 2024): what is averaged in the canonical space. ``average="x0"``
  (Tweedie's x0-hat, the default), ``"eps"`` (the noise estimate; visual anagrams' formulation,
  Geng et al. 2024) and ``"xt"`` (each view keeps its own ``x_t`` and the
  *states* after each step are averaged: MultiDiffusion's eq. 5 as written; :func:`sample_joint_xt`).
  For views that are pixel maps (crops, flips, rotations, permutations) ``eps = (y - x0) / sigma`` is
  affine in x0 with the same ``y`` for all views, so x0- and eps-averaging are the same canvas, and a
  deterministic DDIM step averaged in ``x_t`` is too (SyncTweedies' equivalence of the cases for 1:1 maps;
  tested). They part with a stochastic sampler: averaging ``x_t`` averages each view's independent
  noise, which shrinks its variance where views overlap (by 1/k for k views); averaging x0 keeps one
  canonical noise.
- **Visual anagrams**: the terms are invertible views of the whole canvas, each with its own prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from .._utils import GeneratorLike, append_dims, as_batch, check_choice, randn, seeded_generators
from ..condition import broadcast_condition, concat_conditions
from ..denoiser import DenoiserFn, DenoiserWrapper
from ..generation import Guidance, LoadedModel, generate, guided_denoiser
from ..generation.generate import sampling_grid
from ..samplers import sample_ddim
from ..schedules import check_sigmas
from .views import View, check_coverage, check_invertible

Average = Literal["x0", "eps", "xt"]
AVERAGES = ("x0", "eps", "xt")
Method = Literal["naive", "multidiffusion", "syncdiffusion"]
METHODS = ("naive", "multidiffusion", "syncdiffusion")
Features = Callable[[Tensor], Tensor]  # images (B, C, h, w) in [-1, 1] -> features (B, D), differentiable


@dataclass(frozen=True)
class Term:
    """One view of the canvas: ``cond`` for one sample (None: the call's own condition) and ``weight``
    ``(H, W)`` on the canvas (None: 1; a region prompt's mask)."""

    view: View
    cond: Any = None
    weight: Tensor | None = None


class JointDenoiser(DenoiserWrapper):
    """The canvas denoiser of ``terms`` (module docstring): ``average`` ``"x0"`` or ``"eps"``;
    ``sync_scale > 0`` adds SyncDiffusion's coherence gradient with feature network ``features`` for
    ``sigma >= sync_min_sigma``; terms go through ``inner`` in batches of ``chunk`` views."""

    def __init__(self, inner: DenoiserFn, terms: Sequence[Term], *, average: Average = "x0",
                 sync_scale: float = 0.0, features: Features | None = None, sync_min_sigma: float = 0.0,
                 chunk: int = 64):
        super().__init__(inner, require_process=False)
        check_choice("average", average, ("x0", "eps"))  # "xt" is a sampling loop: sample_joint_xt
        if not terms:
            raise ValueError("joint denoising needs at least one view")
        canvas = terms[0].view.canvas
        if any(t.view.canvas != canvas for t in terms):
            raise ValueError("all views must be of one canvas")
        if sync_scale < 0 or not math.isfinite(sync_scale):
            raise ValueError(f"sync_scale must be a finite number >= 0, got {sync_scale}")
        if sync_scale > 0 and features is None:
            raise ValueError("SyncDiffusion (sync_scale > 0) needs a feature network")
        self.terms, self.canvas, self.average = list(terms), canvas, average
        self.sync_scale, self.features, self.sync_min_sigma, self.chunk = float(sync_scale), features, sync_min_sigma, chunk
        self.weights = [self._weight(t) for t in self.terms]  # (h, w) per view
        self.norm = sum(t.view.scatter(w[None, None])[0, 0] for t, w in zip(self.terms, self.weights))
        if bool((self.norm <= 0).any()):
            raise ValueError(f"the views leave {int((self.norm <= 0).sum())} canvas pixels with no weight")

    def _weight(self, term: Term) -> Tensor:
        if term.weight is None:
            return torch.ones(term.view.shape, dtype=torch.float64)
        w = torch.as_tensor(term.weight, dtype=torch.float64)
        if tuple(w.shape) != term.view.canvas:
            raise ValueError(f"a region mask must be (H, W) = {term.view.canvas}, got {tuple(w.shape)}")
        return term.view.gather(w[None, None])[0, 0]

    def _conds(self, cond: Any, b: int, terms: Sequence[int]) -> Any:
        parts = [cond if self.terms[k].cond is None else broadcast_condition(self.terms[k].cond, b) for k in terms]
        if all(p is None for p in parts):
            return None
        if any(p is None for p in parts):
            raise ValueError("some views have a condition and others none: give every view one, or the call one")
        out = parts[0]
        for p in parts[1:]:
            out = concat_conditions(out, p)
        return out

    def views_x0(self, y: Tensor, sigma: Tensor, cond: Any, terms: Sequence[int]) -> Tensor:
        """``(K, B, C, h, w)``: the inner denoiser's x0 of each view in ``terms`` (one batch per chunk)."""
        b, out = y.shape[0], []
        for i in range(0, len(terms), self.chunk):
            part = list(terms[i:i + self.chunk])
            ys = torch.cat([self.terms[k].view.project(y) for k in part])
            x0 = self.inner(ys, sigma.repeat(len(part)), self._conds(cond, b, part))
            out.append(x0.unflatten(0, (len(part), b)))
        return torch.cat(out)

    def forward(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        s = as_batch(sigma, y)
        everyone = range(len(self.terms))
        sync = self.sync_scale > 0 and bool((s >= self.sync_min_sigma).all()) and len(self.terms) > 1
        x0 = self._synced(y, s, cond) if sync else self.views_x0(y, s, cond, everyone)
        sv = append_dims(s, y.ndim).to(y)
        total = torch.zeros_like(y)
        for k, t in enumerate(self.terms):
            w = self.weights[k].to(y)
            # x0 and eps = (y_k - x0_k) / sigma: the same canvas for pixel-map views (module docstring), but
            # eps is what visual anagrams average, kept so the equivalence is a tested fact, not an assumption.
            val = x0[k] if self.average == "x0" else (t.view.project(y) - x0[k]) / sv
            total = total + t.view.unproject(w * val)
        mean = total / self.norm.to(y)
        return mean if self.average == "x0" else y - sv * mean

    def _synced(self, y: Tensor, s: Tensor, cond: Any) -> Tensor:
        """SyncDiffusion (Lee et al. 2023, Algorithm 1): each view's x0 with the coherence gradient toward
        the anchor (view 0), ``x0_i - w sigma^2 grad_{y_i} ||f(x0_i) - f(x0_0)||^2``."""
        assert self.features is not None
        with torch.no_grad():
            first = self.views_x0(y, s, cond, [0])[0]
            anchor = self.features(first.clamp(-1, 1))
        b, scale = y.shape[0], self.sync_scale * append_dims(s, y.ndim).to(y) ** 2
        out = [first[None]]
        rest = list(range(1, len(self.terms)))
        for i in range(0, len(rest), self.chunk):  # the views of a chunk in one batch: their losses are separate
            part = rest[i:i + self.chunk]
            with torch.enable_grad():
                ys = torch.cat([self.terms[k].view.project(y) for k in part]).detach().requires_grad_(True)
                x0 = self.inner(ys, s.repeat(len(part)), self._conds(cond, b, part))
                loss = (self.features(x0.clamp(-1, 1)) - anchor.repeat(len(part), 1)).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, ys)
            out.append((x0.detach() - scale.repeat(len(part), 1, 1, 1) * grad).unflatten(0, (len(part), b)))
        return torch.cat(out)


def sample_joint_xt(joint: JointDenoiser, sigmas: Tensor, shape: Sequence[int], *, cond: Any = None,
                    eta: float = 1.0, generators: GeneratorLike = None, x_init: Tensor | None = None) -> Tensor:
    """The x_t average of SyncTweedies (MultiDiffusion's eq. 5 as written): every view steps its own ``x_t`` by
    DDIM(eta) (Song et al. 2021, eq. 12, in the VE frame: Euler to ``sigma_down`` plus noise ``sigma_up``)
    with its own noise, and the views' next states are averaged into the canvas. ``eta = 0`` is the x0
    average under DDIM; ``eta > 0`` averages independent noises (module docstring). The start is the
    process's prior at ``sigmas[0]`` (as :func:`~denoisekit.samplers.run.sample`) or ``x_init``."""
    b = shape[0]
    gens = seeded_generators(0, b) if generators is None else generators
    if x_init is None:
        process = joint.process
        std = float(sigmas[0]) if process is None else float(process.prior_std(sigmas[0]))
        y = randn(shape, gens, dtype=torch.float32) * std
    else:
        y = x_init
    grid = check_sigmas(sigmas)
    for i in range(len(grid) - 1):
        x0 = joint.views_x0(y, torch.full((b,), float(grid[i]), dtype=torch.float64), cond, range(len(joint.terms)))
        total = torch.zeros_like(y)
        for k, t in enumerate(joint.terms):
            # one DDIM step of this view from its own state, with x0 already computed (in the batch above)
            yk = sample_ddim(lambda *_, k=k: x0[k], t.view.project(y), grid[i:i + 2], eta=eta, generator=gens)
            total = total + t.view.unproject(joint.weights[k].to(y) * yk)
        y = total / joint.norm.to(y)
    return y


def check_pixel_model(model: LoadedModel) -> tuple[int, int, int]:
    """``(C, h, w)`` of a pixel run's window; a latent run is refused (its decoder is not a pixel map)."""
    if model.decoder is not None:
        raise ValueError("joint denoising needs a pixel run (this one is latent: windows of its latent canvas "
                         "would need its decoder to be local)")
    c, h, w = model.image_shape
    return c, h, w


def joint_sample(model: LoadedModel, terms: Sequence[Term], n: int, *, average: Average = "x0",
                 sync_scale: float = 0.0, features: Features | None = None, sync_min_sigma: float = 0.0,
                 cond: Any = None, guidance: Guidance | None = None, sampler: str | None = None,
                 nfe: int | None = None, eta: float = 1.0, seed: int = 0, **options: Any) -> Tensor:
    """``n`` canvases ``(n, C, H, W)`` of ``terms`` through :func:`~denoisekit.generation.generate` (any
    sampler; per-sample seeds ``seed + i``); guidance (default: the run's) applies to each view inside the
    average. ``average="xt"`` runs :func:`sample_joint_xt` on the run's grid for ``nfe`` (DDIM, ``eta``)."""
    check_choice("average", average, AVERAGES)
    c = check_pixel_model(model)[0]
    inner = guided_denoiser(model, guidance)
    joint = JointDenoiser(inner, terms, average="x0" if average == "xt" else average, sync_scale=sync_scale,
                          features=features, sync_min_sigma=sync_min_sigma)
    canvas_model = replace(model, denoiser=joint, image_shape=(c, *joint.canvas))
    if average == "xt":
        if sync_scale > 0:
            raise ValueError("average='xt' has no SyncDiffusion term: use x0 or eps")
        if options:
            raise ValueError(f"average='xt' runs its own DDIM loop: it takes no {', '.join(sorted(options))}")
        d = model.defaults
        grid = sampling_grid(model, sampler="ddim", nfe=nfe if nfe is not None else d.nfe, schedule=d.schedule)
        with torch.no_grad():
            return sample_joint_xt(joint, grid, (n, c, *joint.canvas), cond=cond, eta=eta,
                                   generators=seeded_generators(seed, n))
    grad = torch.enable_grad() if sync_scale > 0 else torch.no_grad()
    with grad:
        return generate(canvas_model, n, cond, guidance=Guidance(), sampler=sampler, nfe=nfe, seed=seed,
                        **options).detach()


def anagram_terms(views: Sequence[View], conds: Sequence[Any]) -> list[Term]:
    """Visual anagrams' terms: one invertible view per condition (the first is usually the identity)."""
    if len(views) != len(conds):
        raise ValueError(f"an anagram needs one view per prompt: got {len(views)} views for {len(conds)} prompts")
    return [Term(check_invertible(v), c) for v, c in zip(views, conds)]


def region_terms(views: Sequence[View], masks: Tensor, conds: Sequence[Any]) -> list[Term]:
    """MultiDiffusion's region-based terms (Bar-Tal et al. 2023, Sec. 3.2): every window once per region
    whose mask ``masks[r]`` (``(R, H, W)`` in [0, 1]) reaches it, weighted by the mask, with ``conds[r]``.
    The masks must cover the canvas and match the prompts in number."""
    if masks.ndim != 3:
        raise ValueError(f"region masks must be (R, H, W), got shape {tuple(masks.shape)}")
    if len(masks) != len(conds):
        raise ValueError(f"{len(masks)} region masks for {len(conds)} prompts: give one prompt per mask")
    canvas = views[0].canvas
    if tuple(masks.shape[1:]) != canvas:
        raise ValueError(f"region masks are {tuple(masks.shape[1:])}, the canvas is {canvas}")
    check_coverage(views)
    if bool((masks.sum(0) <= 0).any()):
        raise ValueError(f"the region masks leave {int((masks.sum(0) <= 0).sum())} canvas pixels in no region")
    terms = []
    for r, c in enumerate(conds):
        for v in views:
            if float(v.project(masks[r][None, None].double()).sum()) > 0:
                terms.append(Term(v, c, masks[r]))
    return terms


def pixel_features(images: Tensor) -> Tensor:
    """``(B, C * 16)``: images average-pooled to 4x4, a differentiable perceptual stand-in for SyncDiffusion
    when no feature network fits (coarse layout and colour, blind to texture)."""
    return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)


def border_energy(images: Tensor) -> Tensor:
    """``(W,)``: the mean squared horizontal difference across each column border of ``images``
    ``(B, C, H, W)``; border ``j`` is between columns ``j`` and ``j + 1``, and border ``W - 1`` wraps round to
    column 0 (a loop canvas's seam)."""
    x = images.double()
    return (x.roll(-1, dims=3) - x).pow(2).mean(dim=(0, 1, 2))


def seam_ratio(images: Tensor, borders: Sequence[int], interior: Sequence[int] | None = None) -> float:
    """The seam metric: :func:`border_energy` at ``borders`` (window edges, or ``W - 1`` for the wrap) over its
    mean at the ``interior`` borders (default: all others but the wrap border ``W - 1``). 1: no visible seam;
    a seam between independently drawn content is well above 1."""
    energy = border_energy(images)
    width = len(energy)
    seams = sorted({int(b) % width for b in borders})
    inside = ([j for j in range(width) if j not in seams and j != width - 1] if interior is None
              else sorted({int(j) % width for j in interior} - set(seams)))
    if not seams or not inside:
        raise ValueError(f"seam_ratio needs some borders and some interior of a {width}-column canvas")
    return float(energy[seams].mean() / energy[inside].mean().clamp(min=1e-12))
