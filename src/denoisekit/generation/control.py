"""ControlNets and T2I-Adapters on a loaded model: ``sample BASE --controlnet RUN --control edges.png``.

:func:`with_controlnets` loads control files (a ``controlnet`` run's directory means its
``controlnet.safetensors``) for the :class:`LoadedModel`'s U-Net, each at its ``conditioning_scale``, after
checking that each was made for this base (the weights hash the file records against the base's hash from
before any LoRA or embedding, ``model.base_sha256 or model.sha256``), and wraps the denoiser in a :class:`~denoisekit.models.controlnet.ControlledDenoiser`: guidance and every
sampler see it through :func:`~denoisekit.generation.generate`. Scale 0 is the base exactly.

With LoRA adapters (:func:`~denoisekit.generation.adapters.with_loras`, loaded first: ``sample --lora A
--controlnet B``), the adapters change the base U-Net and each ControlNet, a copy of the base's own encoder
with its own trained weights, adds its residuals to that adapted U-Net (as diffusers does with a LoRA on the
U-Net beside a ControlNet).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ..io import file_sha256
from ..models.controlnet import CONTROL_FILE, controlled_denoiser, find_unet, load_control
from ..models.unet import UNet
from .model import LoadedModel


def control_file(path: str | os.PathLike[str]) -> Path:
    """The control file ``path`` names: the file itself, or a ``controlnet`` run directory's file."""
    p = Path(path)
    if p.is_dir():
        if not (p / CONTROL_FILE).is_file():
            raise FileNotFoundError(f"--controlnet {str(p)!r}: a directory without {CONTROL_FILE} (not a finished "
                                    f"controlnet run)")
        return p / CONTROL_FILE
    return p


def with_controlnets(model: LoadedModel, controls: Sequence[tuple[str | os.PathLike[str], float]], *,
                     control: Tensor | None = None, start: float = 0.0, end: float = 1.0) -> LoadedModel:
    """``model`` with the control modules ``[(file, scale), ...]`` (summed; their control images are the
    consecutive channels of ``control`` ``(1, C, H, W)``, one image for all samples, or of each sample's
    ``cond["control"]``), on between ``start`` and ``end`` of the trajectory. A control image of the wrong
    size or channels, or a file for another base, is one line naming it."""
    if not controls:
        return model
    net = getattr(model.denoiser, "net", None)
    unet = _without_lora(find_unet(net))
    modules, shown, base = [], [], model.base_sha256 or model.sha256
    digest = hashlib.sha256((model.sha256 or "").encode())
    for path, scale in controls:
        file = control_file(path)
        modules.append(load_control(file, unet, base_sha256=base).to(model.device))
        digest.update(f"|{scale!r}|".encode() + file_sha256(file).encode())
        shown.append(f"{file}:{scale:g}")
    if control is not None:
        channels = sum(m.config.hint_channels for m in modules)
        c, h, w = model.image_shape
        d = modules[0].config.downsample
        if control.ndim != 4 or control.shape[0] != 1 or control.shape[1] != channels or tuple(control.shape[2:]) != (h * d, w * d):
            raise ValueError(f"the control image is {tuple(control.shape[1:])} (C, H, W); the control module(s) "
                             f"need ({channels}, {h * d}, {w * d})")
    den = controlled_denoiser(model.denoiser, modules, [s for _, s in controls], control=control, start=start,
                              end=end)
    return replace(model, denoiser=den, name=f"{model.name} + control {', '.join(shown)}",
                   sha256=digest.hexdigest(), base_sha256=base)


def _without_lora(unet: UNet) -> UNet:
    """``unet``, or, when LoRA adapters are on it, a U-Net of its config without them: what a control module is
    built from (every tensor of the module then comes from its file; a ControlNet never copies an adapter)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft, no adapters
        return unet
    if not any(isinstance(m, LoraLayer) for m in unet.modules()):
        return unet
    with torch.random.fork_rng(devices=[]):  # a throwaway initialisation: leave the global RNG as it was
        return type(unet)(unet.config)
