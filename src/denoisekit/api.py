"""The two-line entry point: ``run = denoisekit.load("runs/x")``, then ``run.generate(...)``.

A :class:`Run` is a trained run directory loaded once (EMA weights, on the GPU when there is one) with the
generation core behind it: :meth:`Run.generate` is :func:`~denoisekit.pipelines.generate.generate_images`
(the same call the ``sample`` command makes, so the same seed gives the same images), and what it returns
saves itself as a labelled grid, an npz or one PNG per image::

    import denoisekit
    run = denoisekit.load("runs/digits")
    out = run.generate(20, label="all", cfg=2)     # out.images: (20, 1, 8, 8) in [-1, 1]; out.labels: (20,)
    out.save("grid.png")                           # one labelled row per class
    text = denoisekit.load("runs/shapes-text").generate(8, prompt="a red circle")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch

from .conditioning import image_conditioner
from .generation import LoadedModel
from .pipelines.generate import Generated, Labels, generate_images
from .train.run import load_model


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Run:
    """A loaded run: its :class:`~denoisekit.generation.LoadedModel` (``model``), config, class names and
    example prompts, and :meth:`generate`."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.model.captions

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.model.image_shape))
        what = (f"{len(self.classes) or self.model.num_classes} classes" if self.model.num_classes is not None
                else self.model.kind)
        return f"Run({self.model.name!r}: {shape}{' latents' if self.model.decoder is not None else ''}, {what}, " \
               f"{self.device})"

    def generate(self, n: int | None = None, *, prompt: str | Sequence[str] | None = None, label: Labels = None,
                 negative_prompt: str | None = None, cfg: float | None = None, sampler: str | None = None,
                 nfe: int | None = None, seed: int = 0, batch_size: int = 256, progress: bool = False,
                 **options: Any) -> Generated:
        """``n`` images (default the run's ``sample.n``): for a class model ``label`` is an index, a stored class
        name, a sequence of them, or ``"all"``/None (image ``i`` has class ``i mod K``); for a text model
        ``prompt`` is one prompt or a list (``n // len(prompts)`` each; default the run's example prompts);
        ``cfg`` the classifier-free guidance scale (default the run's; 1 = none); ``sampler``/``nfe`` default
        the run's. Other ``options`` (``schedule``, ``solver``, ``cfg_rescale``, ``cfg_interval``, ...) go to
        :func:`~denoisekit.pipelines.generate.generate_images`. Image ``i`` uses seed ``seed + i``.
        Returns a :class:`~denoisekit.pipelines.generate.Generated`: ``.images`` ``(N, C, H, W)`` in
        ``[-1, 1]``, ``.labels``/``.prompts``, ``.save(path)``."""
        if image_conditioner(self.model.condition) is not None:
            raise ValueError("this run is image-conditioned: use run.restore(source)")
        prompts = [prompt] if isinstance(prompt, str) else None if prompt is None else list(prompt)
        with torch.no_grad():
            out = generate_images(self.model, n or self.model.defaults.n, labels=label, prompts=prompts,
                                  negative_prompt=negative_prompt, cfg_scale=cfg, sampler=sampler, nfe=nfe,
                                  seed=seed, batch_size=batch_size, progress=progress, **options)
        return dataclasses.replace(out, images=out.images.clamp(-1, 1))


    def restore(self, source: Any, *, seed: int = 0, **options: Any) -> torch.Tensor:
        """An image-conditioned (Palette) run's outputs ``(N, C, H, W)`` in ``[-1, 1]`` for ``source``: what the
        model takes (grey images to colorize, low-resolution images, or ``(image, mask)`` to inpaint; see
        :func:`~denoisekit.pipelines.palette.restore`, which ``options`` go to). Image ``i`` uses seed ``seed + i``."""
        from ._utils import seeded_generators
        from .pipelines.palette import restore

        conditioner = image_conditioner(self.model.condition)
        if conditioner is None:
            raise ValueError(f"this run is not image-conditioned (condition.kind: {self.model.kind}): use run.generate")
        n = len(source[0] if isinstance(source, tuple) else source)
        with torch.no_grad():
            return restore(self.model, conditioner, source, generator=seeded_generators(seed, n), **options)


def load(run_dir: str | os.PathLike[str], *, device: str | torch.device | None = None,
         weights: Literal["ema", "model"] = "ema") -> Run:
    """The run directory ``run_dir`` ready to generate (module docstring), on ``device`` (default: CUDA when
    available, else the CPU) with its EMA weights (``weights="model"``: the raw ones). Errors name the path."""
    return Run(load_model(run_dir, weights=weights, device=default_device() if device is None else device))
