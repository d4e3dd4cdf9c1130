"""What the Generate button does, without Gradio: a :class:`Request` becomes images through
:func:`~denoisekit.pipelines.generate.generate_images` (the library's one way to make them), each written as a
PNG with its parameters (:mod:`~denoisekit.pipelines.png_info`) under the outputs directory."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..pipelines.generate import Generated, generate_images
from ..pipelines.png_info import generation_parameters
from .runs import RunLibrary

#: Limits of one request (the UI's sliders stop there; the API is checked too).
MAX_BATCH, MAX_NFE, MAX_PROMPT, MAX_LORAS = 16, 1000, 2000, 2
SEED_RANGE = 2**31


class Cancelled(Exception):
    """The user pressed Cancel: sampling stops at the next step."""


@dataclass(frozen=True)
class Request:
    """One Generate press: the run, its condition (prompt / negative prompt, a class index or name, or for an
    image-conditioned run the ``source`` image file) and settings; ``seed`` -1 draws a random one. An
    ``init_image`` makes it img2img (SDEdit) at ``strength``. ``loras`` ``[(file, weight), ...]`` and a
    ``controlnet`` (a control run or file) reading ``control_image`` at ``control_scale`` are
    ``sample --lora FILE:W --controlnet RUN --control IMAGE --control-scale S``. An ``inpaint_image`` with a
    ``mask`` (white = missing) is ``denoisekit inpaint`` with ``method`` (NFE ``nfe``, seed ``seed``)."""

    run: str
    prompt: str = ""
    negative_prompt: str = ""
    label: int | str | None = None
    sampler: str = "dpmpp_2m"
    schedule: str = "karras"
    nfe: int = 20
    cfg_scale: float = 1.0
    cfg_rescale: float = 0.0
    seed: int = -1
    batch: int = 1
    source: str | None = None
    init_image: str | None = None
    strength: float = 0.6
    loras: tuple[tuple[str, float], ...] = ()
    controlnet: str | None = None
    control_image: str | None = None
    control_scale: float = 1.0
    inpaint_image: str | None = None
    mask: str | None = None
    method: str = "repaint"

    def check(self) -> None:
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch size must be in 1..{MAX_BATCH}, got {self.batch}")
        if not 1 <= self.nfe <= MAX_NFE:
            raise ValueError(f"NFE must be in 1..{MAX_NFE}, got {self.nfe}")
        if len(self.prompt) > MAX_PROMPT or len(self.negative_prompt) > MAX_PROMPT:
            raise ValueError(f"prompts are limited to {MAX_PROMPT} characters")
        if not -1 <= self.seed < SEED_RANGE:
            raise ValueError(f"seed must be -1 (random) or in 0..{SEED_RANGE - 1}, got {self.seed}")
        if len(self.loras) > MAX_LORAS:
            raise ValueError(f"at most {MAX_LORAS} LoRA adapters, got {len(self.loras)}")
        if self.controlnet and not self.control_image:
            raise ValueError("the ControlNet needs a control image")
        if bool(self.inpaint_image) != bool(self.mask):
            raise ValueError("inpainting needs an image and a mask (draw the missing region)")


@dataclass(frozen=True)
class Result:
    paths: list[Path]
    parameters: list[str]
    seed: int
    seconds: float
    generated: Generated | None  # None for a restoration


def run_request(library: RunLibrary, req: Request, outputs: Path, *,
                progress: Callable[[float], None] | None = None, cancel: threading.Event | None = None) -> Result:
    """Generate ``req`` and write its PNGs under ``outputs/<time>-<seed>/``; ``progress`` gets the fraction
    done after each sampler step, ``cancel`` (when set) stops sampling with :class:`Cancelled`."""
    from ..generation import sampling_grid
    from ..pipelines.output import save_each

    req.check()
    model = library.load(req.run, req.loras)
    info = library.describe(model)
    seed = secrets.randbelow(SEED_RANGE) if req.seed < 0 else req.seed
    if req.inpaint_image:
        return _inpaint(model, req, seed, outputs)
    model = _with_control(model, req)
    if info["image"]:
        return _restore(model, req, seed, outputs)
    if req.init_image:
        return _img2img(model, info, req, seed, outputs)
    steps = len(sampling_grid(model, sampler=req.sampler, nfe=req.nfe, schedule=req.schedule)) - 1

    def on_step(payload: dict) -> None:  # one sampler call: the request is one batch
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        if progress is not None:
            progress(min(1.0, (payload["i"] + 1) / max(1, steps)))

    start = time.perf_counter()
    with torch.no_grad():
        result = generate_images(
            model, req.batch, labels=req.label if info["class"] else None,
            prompts=[req.prompt] if info["text"] else None,
            negative_prompt=(req.negative_prompt or None) if info["text"] else None,
            cfg_scale=req.cfg_scale if info["guided"] else None, cfg_rescale=req.cfg_rescale if info["guided"] else 0.0,
            sampler=req.sampler, nfe=req.nfe, schedule=req.schedule, seed=seed, batch_size=req.batch,
            callback=on_step)
    seconds = time.perf_counter() - start
    h, w = result.images.shape[2:]
    params = generation_parameters(model, len(result), sampler=req.sampler, nfe=req.nfe, schedule=req.schedule,
                                   cfg_scale=req.cfg_scale, cfg_rescale=req.cfg_rescale, seed=seed, size=(w, h),
                                   prompts=result.prompts,
                                   labels=None if result.labels is None else result.labels.tolist(),
                                   negative_prompt=(req.negative_prompt or None) if info["text"] else None)
    if not torch.isfinite(result.images).all():
        raise FloatingPointError("samples contain NaN or inf")
    folder = outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{secrets.token_hex(3)}"
    save_each(result.images, folder, params)
    return Result(sorted(folder.glob("*.png")), params, seed, seconds, result)


def _restore(model: Any, req: Request, seed: int, outputs: Path) -> Result:
    """An image-conditioned (Palette) run: ``req.source``, a clean image at the run's size, degraded by the run's
    task and restored ``req.batch`` times (image ``i`` with seed ``seed + i``), as ``denoisekit sample --source``
    does with one image file."""
    from .._utils import seeded_generators
    from ..conditioning import image_conditioner
    from ..data.folder import load_image
    from ..pipelines.output import save_each
    from ..pipelines.palette import restore

    conditioner = image_conditioner(model.condition)
    if not req.source:
        raise ValueError(f"run {req.run!r} is image-conditioned ({conditioner.task}): give a source image")
    c, h, w = conditioner.image_shape
    try:
        clean = load_image(str(req.source), None, 1 if c == 1 else 3)[None]
    except OSError as e:
        raise ValueError(f"the source is not a readable image ({e})") from None
    if tuple(clean.shape[2:]) != (h, w):
        raise ValueError(f"the source is {clean.shape[3]}x{clean.shape[2]}; this run restores {w}x{h} images")
    gens = seeded_generators(seed, req.batch)
    degraded = [conditioner.degrade(clean, [g]) for g in gens]  # each image's own degradation, as the CLI's first
    source: Any = (tuple(torch.cat(parts) for parts in zip(*degraded)) if isinstance(degraded[0], tuple)
                   else torch.cat(degraded))
    start = time.perf_counter()
    with torch.no_grad():
        x = restore(model, conditioner, source, generator=gens, batch_size=req.batch, sampler=req.sampler,
                    nfe=req.nfe, schedule=req.schedule)
    seconds = time.perf_counter() - start
    params = generation_parameters(model, len(x), sampler=req.sampler, nfe=req.nfe, schedule=req.schedule,
                                   cfg_scale=1.0, seed=seed, size=(w, h))
    folder = outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{secrets.token_hex(3)}"
    save_each(x, folder, params)
    return Result(sorted(folder.glob("*.png")), params, seed, seconds, None)


def _img2img(model: Any, info: dict[str, Any], req: Request, seed: int, outputs: Path) -> Result:
    """img2img: ``req.init_image`` (at the run's image size) noised to ``req.strength`` and sampled back with the
    request's condition and guidance (:func:`~denoisekit.pipelines.sdedit.sdedit`, SDEdit), image ``i`` with
    seed ``seed + i``, as ``denoisekit edit`` does."""
    from ..data.folder import load_image
    from ..generation import Guidance
    from ..generation.model import decode
    from ..pipelines.generate import resolve_label, user_condition
    from ..pipelines.output import save_each
    from ..pipelines.sdedit import sdedit

    c, h, w = (model.image_shape if model.decoder is None
               else decode(model.decoder, torch.zeros(1, *model.image_shape)).shape[1:])
    try:
        x = load_image(str(req.init_image), None, 1 if c == 1 else 3)[None]
    except OSError as e:
        raise ValueError(f"the input image is not readable ({e})") from None
    if tuple(x.shape[2:]) != (h, w):
        raise ValueError(f"the input image is {x.shape[3]}x{x.shape[2]}; this run makes {w}x{h} images")
    negative = (req.negative_prompt or None) if info["text"] else None
    label = resolve_label(req.label, model.classes, model.num_classes) if info["class"] else None
    cond, _ = user_condition(model, req.batch, labels=label,
                             prompts=[req.prompt] if info["text"] else None)
    guidance = (Guidance(cfg_scale=req.cfg_scale, rescale=req.cfg_rescale,
                         negative=None if negative is None else {"text": [negative]}) if info["guided"] else Guidance())
    start = time.perf_counter()
    with torch.no_grad():
        out = sdedit(model, x.expand(req.batch, -1, -1, -1), req.strength, cond=cond, sampler=req.sampler,
                     nfe=req.nfe, schedule=req.schedule, guidance=guidance, seed=seed, batch_size=req.batch)
    seconds = time.perf_counter() - start
    params = generation_parameters(model, len(out), sampler=req.sampler, nfe=req.nfe, schedule=req.schedule,
                                   cfg_scale=req.cfg_scale, cfg_rescale=req.cfg_rescale, seed=seed, size=(w, h),
                                   prompts=cond.get("text") if isinstance(cond, dict) else None,
                                   labels=cond.tolist() if isinstance(cond, torch.Tensor) else None,
                                   negative_prompt=negative, extra={"Denoising strength": req.strength})
    folder = outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{secrets.token_hex(3)}"
    save_each(out.clamp(-1, 1), folder, params)
    return Result(sorted(folder.glob("*.png")), params, seed, seconds, None)


def _with_control(model: Any, req: Request) -> Any:
    """``model`` with ``req.controlnet`` reading ``req.control_image`` (grayscale, 0-255 read as 0-1) at
    ``req.control_scale``, as ``sample --controlnet RUN --control IMAGE --control-scale S`` does."""
    from ..data.folder import load_image
    from ..generation.control import with_controlnets

    if not req.controlnet:
        return model
    try:
        control = (load_image(str(req.control_image), None, 1) + 1) / 2  # the CLI's reading of --control
    except OSError as e:
        raise ValueError(f"the control image is not readable ({e})") from None
    try:
        return with_controlnets(model, [(req.controlnet, float(req.control_scale))], control=control[None])
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None


def read_mask(path: str | Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A mask image as ``(1, 1, H, W)``, 1 = missing (lighter than mid-grey), at the run's size, with missing and
    known pixels (``denoisekit inpaint --mask``'s reading)."""
    from ..data.folder import load_image

    try:
        m = (load_image(str(path), None, 1)[None] > 0).float()
    except OSError as e:
        raise ValueError(f"the mask is not a readable image ({e})") from None
    if tuple(m.shape[2:]) != tuple(shape[1:]):
        raise ValueError(f"the mask is {m.shape[3]}x{m.shape[2]}; this run makes {shape[2]}x{shape[1]} images")
    if not bool(m.any()):
        raise ValueError("the mask has no missing pixels: draw over the region to fill")
    if bool(m.all()):
        raise ValueError("the mask covers the whole image: use Generate for a new image")
    return m


def _inpaint(model: Any, req: Request, seed: int, outputs: Path) -> Result:
    """``req.inpaint_image`` with the ``req.mask`` pixels filled by ``req.method`` with the run as the prior
    (:func:`~denoisekit.pipelines.inverse.restore` over an :class:`~denoisekit.data.operators.Inpaint`), as
    ``denoisekit inpaint RUN --input IMAGE --mask MASK --method M --nfe N --seed S`` does (its result row)."""
    from .._utils import seeded_generators
    from ..data.folder import load_image
    from ..data.operators import Inpaint
    from ..pipelines.inverse import check_prior, restore
    from ..pipelines.output import save_each

    check_prior(model, req.method)
    shape = tuple(model.image_shape)
    try:
        x = load_image(str(req.inpaint_image), None, 1 if shape[0] == 1 else 3)[None]
    except OSError as e:
        raise ValueError(f"the image to inpaint is not readable ({e})") from None
    if tuple(x.shape[2:]) != shape[1:]:
        raise ValueError(f"the image to inpaint is {x.shape[3]}x{x.shape[2]}; this run makes {shape[2]}x{shape[1]} "
                         f"images")
    op = Inpaint(read_mask(req.mask, shape))
    measurement = op.measure(x, 0.0, seeded_generators(seed + 10**6, 1))
    start = time.perf_counter()
    with torch.no_grad():
        res = restore(model, op, measurement, req.method, sigma_y=0.0, nfe=req.nfe, seed=seed)
    seconds = time.perf_counter() - start
    params = generation_parameters(model, 1, sampler=req.method, nfe=res.nfe, schedule="inpaint",  # no sampler grid
                                   cfg_scale=1.0, seed=seed, size=(shape[2], shape[1]))
    folder = outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{secrets.token_hex(3)}"
    save_each(res.images.clamp(-1, 1), folder, params)
    return Result(sorted(folder.glob("*.png")), params, seed, seconds, None)
