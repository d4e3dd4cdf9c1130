"""Score distillation loops: optimise an image, a shapes renderer or a voxel scene so a run's denoiser scores it as a prompt.

:func:`distill_image` is DreamFusion's loop (Poole et al. 2023, Sec. 3) over a 2-D parameterisation: render, take
the method's loss from :mod:`denoisekit.score_distillation` (SDS, PDS, VSD), step Adam on the parameters (and,
for VSD, one step on the particle denoiser's LoRA per iteration: Wang et al. 2023, Algorithm 1). A latent run is
optimised in latent space for ``param="image"`` (then decoded), and through the autoencoder's encoder for the
renderers. :func:`text_to_3d` is the same loop over a :class:`~denoisekit.models.render3d.VoxelScene` rendered
from random azimuths, with DreamFusion's view-dependent prompts ("..., front view") for text runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .._utils import check_choice
from ..generation.model import LoadedModel, decode
from ..models.lora import add_lora, lora_parameters
from ..models.render2d import ShapesRenderer
from ..models.render3d import VoxelScene
from ..score_distillation import PDS, SDS, VSD, ScoreDistillation

Method = Literal["sds", "pds", "vsd"]
METHODS = ("sds", "pds", "vsd")
Param = Literal["image", "shapes"]
PARAMS = ("image", "shapes")


def pixel_shape(model: LoadedModel) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images a run makes (decoded, for a latent run)."""
    if model.decoder is None:
        return tuple(model.image_shape)  # type: ignore[return-value]
    with torch.no_grad():
        return tuple(decode(model.decoder, torch.zeros(1, *model.image_shape, device=model.device)).shape[1:])


def prompt_condition(model: LoadedModel, prompt: str | Sequence[str], n: int) -> Any:
    """The condition of ``n`` copies of ``prompt`` (or ``n`` prompts): text for a text run, the class of that
    name (or index) for a class run."""
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if model.kind == "text":
        return {"text": prompts}
    if model.kind == "class":
        names = model.classes or tuple(str(i) for i in range(model.num_classes or 0))
        bad = [p for p in prompts if p not in names]
        if bad:
            raise ValueError(f"prompt {bad[0]!r} is not a class of this run; allowed: {', '.join(names)}")
        return torch.tensor([names.index(p) for p in prompts], dtype=torch.long, device=model.device)
    raise ValueError(f"score distillation needs a text or class run (a prompt to distil), this one is {model.kind!r}")


def distillation_loss(model: LoadedModel, method: Method, *, source: Tensor | None = None, source_cond: Any = None,
                      cfg_scale: float = 7.5, sigma_range: tuple[float, float] = (0.05, 2.0), weighting: str = "snr",
                      lora_rank: int = 4, lora_lr: float = 1e-3, generator: torch.Generator | None = None
                      ) -> tuple[ScoreDistillation, torch.optim.Optimizer | None]:
    """The method's loss over the run's denoiser, and for VSD the optimiser of its particle denoiser's LoRA
    (the pretrained denoiser plus rank-``lora_rank`` adapters on its attention projections)."""
    check_choice("method", method, METHODS)
    opts = {"sigma_range": sigma_range, "weighting": weighting, "cfg_scale": cfg_scale,
            "null_label": model.null_label, "generator": generator}
    if method == "sds":
        return SDS(model.denoiser, **opts), None
    if method == "pds":
        if source is None:
            raise ValueError("PDS edits a source: give --source (an image) and optionally --source-prompt")
        return PDS(model.denoiser, source, source_cond, **opts), None
    particle = add_lora(model.denoiser, rank=lora_rank)
    return VSD(model.denoiser, particle, **opts), torch.optim.Adam(lora_parameters(particle), lr=lora_lr)


def _to_model(model: LoadedModel, render: Tensor, c: int) -> Tensor:
    """A 3-channel render as what a run of ``c``-channel images sees: grey for 1 channel, latents for a latent run."""
    if c == 1:
        render = render.mean(1, keepdim=True)
    elif c != 3:
        raise ValueError(f"the renderers make RGB (or grey) images; this run makes {c}-channel images")
    return model.decoder.encode_latents(render) if model.decoder is not None else render


def _step(loss: ScoreDistillation, particle_opt: torch.optim.Optimizer | None, opt: torch.optim.Optimizer,
          x: Tensor, cond: Any) -> None:
    opt.zero_grad()
    loss(x, cond).backward()
    opt.step()
    if particle_opt is not None:  # Algorithm 1 of Wang et al. 2023: one step of the particle denoiser
        particle_opt.zero_grad()
        loss.particle_loss(x.detach(), cond).backward()
        particle_opt.step()


def distill_image(model: LoadedModel, prompt: str, *, method: Method = "sds", param: Param = "image",
                  source: Tensor | None = None, source_prompt: str | None = None, n: int = 1, steps: int = 300,
                  lr: float | None = None, cfg_scale: float = 7.5, sigma_range: tuple[float, float] = (0.05, 2.0),
                  weighting: str = "snr", kinds: Sequence[str] = ("circle",), lora_rank: int = 4, seed: int = 0,
                  callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """``(n, C, H, W)`` images in ``[-1, 1]`` distilled toward ``prompt`` (module docstring).

    ``source`` (``(n or 1, C, H, W)`` in ``[-1, 1]``): the start of a free image (an edit), and PDS's source
    (required for PDS, with ``source_prompt``, default the prompt). ``callback(i, images)`` sees the images
    after step ``i`` (``i = -1``: the start)."""
    check_choice("method", method, METHODS)
    check_choice("param", param, PARAMS)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method == "pds" and source is None:
        raise ValueError("PDS edits a source: give --source (an image) and optionally --source-prompt")
    g = torch.Generator().manual_seed(seed)
    device, latent = model.device, model.decoder is not None
    shape = pixel_shape(model)
    if source is not None:
        if tuple(source.shape[1:]) != shape:
            raise ValueError(f"the source is {tuple(source.shape[1:])}; this run makes {shape} images")
        source = source.to(device).expand(n, *shape).clone() if len(source) == 1 else source.to(device)
        if len(source) != n:
            raise ValueError(f"got {len(source)} source images for n={n}")
    cond = prompt_condition(model, prompt, n)
    z: Tensor | None = None
    if param == "shapes":
        render = ShapesRenderer(list(kinds), shape[1], batch=n, generator=g).to(device)
        params = list(render.parameters())

        def images() -> Tensor:
            return render()

        def model_input() -> Tensor:
            return _to_model(model, render(), shape[0])
    else:
        with torch.no_grad():
            if source is None:
                z0 = torch.randn((n, *model.image_shape), generator=g).to(device) * 0.5
            else:
                z0 = model.decoder.encode_latents(source) if latent else source
        z = z0.clone().requires_grad_(True)
        params = [z]

        def images() -> Tensor:
            return decode(model.decoder, z) if latent else z

        def model_input() -> Tensor:
            return z
    src = None
    if source is not None:
        with torch.no_grad():
            src = model.decoder.encode_latents(source) if latent else source
    loss, particle_opt = distillation_loss(
        model, method, source=src, source_cond=prompt_condition(model, source_prompt or prompt, n),
        cfg_scale=cfg_scale, sigma_range=sigma_range, weighting=weighting, lora_rank=lora_rank, generator=g)
    opt = torch.optim.Adam(params, lr=0.05 if lr is None else lr)
    if callback is not None:
        with torch.no_grad():
            callback(-1, images().clamp(-1, 1))
    for i in range(steps):
        _step(loss, particle_opt, opt, model_input(), cond)
        if callback is not None:
            with torch.no_grad():
                callback(i, images().clamp(-1, 1))
    with torch.no_grad():
        return images().clamp(-1, 1)


#: DreamFusion's view-dependent suffixes (Poole et al. 2023, Sec. 3.2) by azimuth from the front.
VIEW_SUFFIXES = ("front view", "side view", "back view")


def view_prompt(prompt: str, azimuth: float) -> str:
    """``"{prompt}, {front|side|back} view"``: front within 45 degrees of azimuth 0, back within 45 of 180."""
    a = math.degrees(azimuth) % 360
    off = min(a, 360 - a)
    suffix = VIEW_SUFFIXES[0] if off <= 45 else VIEW_SUFFIXES[2] if off >= 135 else VIEW_SUFFIXES[1]
    return f"{prompt}, {suffix}"


def text_to_3d(model: LoadedModel, prompt: str, *, method: Literal["sds", "vsd"] = "sds", grid: int = 16,
               views: int = 4, steps: int = 300, lr: float = 0.05, cfg_scale: float = 7.5,
               sigma_range: tuple[float, float] = (0.05, 2.0), weighting: str = "snr", elevation: float = 0.0,
               view_prompts: bool | None = None, lora_rank: int = 4, seed: int = 0,
               callback: Callable[[int, Tensor], None] | None = None) -> VoxelScene:
    """A :class:`VoxelScene` distilled toward ``prompt``: each step renders ``views`` random azimuths (stratified
    around the circle) at ``elevation`` (radians) and steps Adam on the method's loss. ``view_prompts`` (default:
    for text runs) appends :func:`view_prompt`'s suffix; class runs see the class alone."""
    check_choice("method", method, ("sds", "vsd"))
    if steps < 1 or views < 1:
        raise ValueError(f"steps and views must be >= 1, got {steps}, {views}")
    view_prompts = model.kind == "text" if view_prompts is None else view_prompts
    if view_prompts and model.kind != "text":
        raise ValueError(f"view-dependent prompts need a text run; this one is {model.kind!r}")
    g = torch.Generator().manual_seed(seed)
    prompt_condition(model, prompt, 1)  # bad prompts fail before any work
    shape = pixel_shape(model)
    if shape[0] not in (1, 3):  # before any work
        raise ValueError(f"the renderers make RGB (or grey) images; this run makes {shape[0]}-channel images")
    scene = VoxelScene(grid, shape[1], generator=g).to(model.device)
    loss, particle_opt = distillation_loss(model, method, cfg_scale=cfg_scale, sigma_range=sigma_range,
                                           weighting=weighting, lora_rank=lora_rank, generator=g)
    opt = torch.optim.Adam(scene.parameters(), lr=lr)
    for i in range(steps):
        az = (torch.arange(views, dtype=torch.float64) + torch.rand(views, generator=g, dtype=torch.float64)) \
            / views * 2 * math.pi
        prompts = [view_prompt(prompt, float(a)) if view_prompts else prompt for a in az]
        images = scene(az, torch.full_like(az, elevation))
        _step(loss, particle_opt, opt, _to_model(model, images, shape[0]), prompt_condition(model, prompts, views))
        if callback is not None:
            with torch.no_grad():
                callback(i, images.detach().clamp(-1, 1))
    return scene


def turntable(scene: VoxelScene, frames: int = 16, elevation: float = 0.0) -> Tensor:
    """``(frames, 3, S, S)`` views at equally spaced azimuths from the front, in ``[-1, 1]``."""
    az = torch.arange(frames, dtype=torch.float64) / frames * 2 * math.pi
    with torch.no_grad():
        return scene(az, torch.full_like(az, elevation)).clamp(-1, 1)
