"""Embeddings of the project's CLIP for its metrics (:mod:`denoisekit.eval.clip`) and its recipe: images checked
and resized to the CLIP's size (with a warning), prompts through the frozen text tower, and retrieval recall."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..models.clip import CLIP
from .clip_data import text_features
from .feature_net import resize_images
from .features import as_images


def clip_images(model: CLIP, images: Any, name: str = "images") -> Tensor:
    """``images`` as float ``(N, 3, S, S)`` in [-1, 1] at the CLIP's size (resized with a warning)."""
    x = as_images(images, name, channels=(3,))
    size = model.config.image_size
    if x.shape[-2:] != (size, size):
        warnings.warn(f"{name} are {x.shape[-2]}x{x.shape[-1]}; the CLIP reads {size}x{size}: resized", stacklevel=3)
        x = resize_images(x, size)
    return x


@torch.no_grad()
def embed_images(model: CLIP, images: Any, *, sigma: float | None = None, batch_size: int = 512,
                 name: str = "images") -> Tensor:
    """Normalised image embeddings ``(N, E)`` float32 (``sigma``: the VE noise of a noise-aware model's input)."""
    x = clip_images(model, images, name)
    dev = next(model.parameters()).device
    return torch.cat([model.encode_image(x[i:i + batch_size].to(dev), sigma).cpu()
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def embed_texts(model: CLIP, prompts: Sequence[str]) -> Tensor:
    """Normalised text embeddings ``(N, E)`` float32 of ``prompts`` (long ones cut, with a warning)."""
    dev = next(model.parameters()).device
    return model.encode_text(text_features(prompts, model.config.max_tokens).to(dev)).cpu()


def pairs(images: Any, prompts: Sequence[str]) -> tuple[Any, list[str]]:
    """``(images, prompts as a list)``; ``TypeError`` for one bare string, ``ValueError`` for a count mismatch."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, one per image, not a single str")
    prompts = list(prompts)
    n = len(images)
    if len(prompts) != n:
        raise ValueError(f"got {n} images but {len(prompts)} prompts")
    return images, prompts


def retrieval(model: CLIP, images: Any, captions: Sequence[str], ks: Sequence[int] = (1, 5),
              sigma: float | None = None) -> dict[str, float]:
    """Recall@k both ways over the set (``i2t@k``: the image's caption among the k nearest distinct captions;
    ``t2i@k``: one of the caption's images among the k nearest images)."""
    images, captions = pairs(images, captions)
    unique = list(dict.fromkeys(captions))
    own = torch.tensor([unique.index(c) for c in captions])
    sims = embed_images(model, images, sigma=sigma) @ embed_texts(model, unique).T  # (N images, U captions)
    out = {}
    for k in ks:
        top_t = sims.topk(min(k, sims.shape[1]), dim=1).indices
        out[f"i2t@{k}"] = float((top_t == own[:, None]).any(1).double().mean())
        top_i = sims.T.topk(min(k, sims.shape[0]), dim=1).indices  # (U, k) image indices
        out[f"t2i@{k}"] = float((own[top_i] == torch.arange(len(unique))[:, None]).any(1).double().mean())
    return out
