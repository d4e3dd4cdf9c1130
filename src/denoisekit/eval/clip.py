"""Image-text metrics with the project's own CLIP (trained offline, cached): CLIP score, R-precision, CLIP-I,
zero-shot classification and retrieval.

No pretrained CLIP can be downloaded here, so :func:`clip_model` trains one (:mod:`denoisekit.eval.clip_recipe`,
a few CPU minutes; ``make clip`` does it once) on shapes captions and emoji names, and keeps it under
``<cache>/clip/<name>-<key>/`` keyed by a hash of its configs and data (a missing entry is trained with one line
saying so, or, with ``build=False``, is a ``FileNotFoundError`` saying how to make it).

=====================  ======================================================================================
metric                 definition
=====================  ======================================================================================
:func:`clip_score`     ``100 * max(cos(image, prompt), 0)`` per image, averaged (Hessel et al. 2021,
                       "CLIPScore", with ``w = 100`` as torchmetrics and the course use it)
:func:`r_precision`    the share of images whose own prompt ranks first among it and ``distractors`` other
                       prompts of the set drawn per image (Xu et al. 2018, AttnGAN; CLIP R-precision of Park
                       et al. 2021)
:func:`clip_i`         mean cosine over all pairs of generated and reference images (Ruiz et al. 2023,
                       DreamBooth's CLIP-I; CLIP-T is :func:`clip_score` / 100 without the clip at 0)
:func:`zero_shot`      accuracy of picking each image's class prompt among all class prompts (Radford et al.
                       2021, Sec. 3.1.2)
:func:`retrieval`      recall@k image->text and text->image (a caption equal to the true one counts as it)
=====================  ======================================================================================

Images: uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in [-1, 1] (:func:`~denoisekit.eval.features.as_images`);
of another size than the CLIP's they are resized with a warning. Prompts longer than the text tower's
``max_tokens`` are cut with a warning naming them (:func:`~denoisekit.eval.clip_data.text_features`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import default_cache_dir
from ..models.clip import CLIP, CLIPConfig
from .clip_embed import clip_images, embed_images, embed_texts, pairs, retrieval  # noqa: F401  (public here too)
from .feature_net import resize_images
from .features import store_in_cache

#: The metric CLIP (clean images) and GLIDE's noise-aware one (for guidance), at the shapes text preset's 16 px.
METRIC_CONFIG = CLIPConfig(image_size=16)
NOISY_CONFIG = dataclasses.replace(METRIC_CONFIG, noise_aware=True)
_MEMO: dict[Path, CLIP] = {}


def clip_folder(config: CLIPConfig = METRIC_CONFIG, training: Any = None,
                cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the CLIP of ``config`` and ``training`` lives in the cache."""
    from .clip_recipe import CLIPTraining, cache_key

    training = training or CLIPTraining()
    name = f"clip{config.image_size}{'-noisy' if config.noise_aware else ''}"
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "clip" / f"{name}-{cache_key(config, training)}"


def load_clip(folder: str | os.PathLike) -> CLIP:
    """The CLIP exported in ``folder`` (a run directory or cache entry), in eval mode without gradients."""
    from safetensors.torch import load_file

    from .clip_recipe import FORMAT, META_FILE, WEIGHTS_FILE

    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no CLIP ({META_FILE} missing); train one with 'make clip' or "
                                "'denoisekit clip --out DIR'")
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    model = CLIP(CLIPConfig(**meta["config"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    model.info = {**meta["info"], "key": meta.get("key"), "folder": str(folder)}
    return model.eval().requires_grad_(False)


def clip_model(config: CLIPConfig = METRIC_CONFIG, training: Any = None, *, cache_dir: str | os.PathLike | None = None,
               build: bool = True, verbose: bool = False) -> CLIP:
    """The cached CLIP of ``config`` (default: the metric one; :data:`NOISY_CONFIG` for guidance), trained on
    first use with a line on stderr (``build=False``: ``FileNotFoundError`` instead); memoised per process."""
    from .clip_recipe import CLIPTraining, train_clip

    training = training or CLIPTraining()
    folder = clip_folder(config, training, cache_dir)
    if folder in _MEMO:
        return _MEMO[folder]
    if (folder / "meta.json").is_file():
        try:
            _MEMO[folder] = load_clip(folder)
            return _MEMO[folder]
        except Exception as e:  # a corrupt or partial entry: json, safetensors and torch raise their own types
            if not build:
                raise
            warnings.warn(f"CLIP cache {folder} is unreadable ({type(e).__name__}: {e}); retraining", stacklevel=2)
            (folder / "meta.json").unlink(missing_ok=True)
    if not (folder / "meta.json").is_file():
        if not build:
            raise FileNotFoundError(f"no CLIP in the cache ({folder}); build it once with 'make clip'")
        print(f"training the {'noise-aware ' if config.noise_aware else ''}CLIP into {folder} (first use, a few "
              "CPU minutes; 'make clip' does it ahead)", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="denoisekit-clip-") as tmp:
            train_clip(Path(tmp) / "run", config, training, verbose=verbose, text_cache=folder.parent)
            store_in_cache(Path(tmp) / "run", folder)
            if not (folder / "meta.json").is_file():  # a read-only cache: use the run before it goes
                model = load_clip(Path(tmp) / "run")
                _MEMO[folder] = model
                return model
    _MEMO[folder] = load_clip(folder)
    return _MEMO[folder]


# ------------------------------------------------------------------------------------------------ metrics

def clip_score(model: CLIP, images: Any, prompts: Sequence[str]) -> dict[str, Any]:
    """``score`` (mean of ``100 * max(cos, 0)``), its ``std`` and the ``per_image`` scores ``(N,)``."""
    images, prompts = pairs(images, prompts)
    cos = (embed_images(model, images) * embed_texts(model, prompts)).sum(-1)
    per = 100 * cos.clamp(min=0).double()
    return {"score": float(per.mean()), "std": float(per.std()) if len(per) > 1 else 0.0, "per_image": per}


def r_precision(model: CLIP, images: Any, prompts: Sequence[str], distractors: int = 99, seed: int = 0) -> float:
    """Share of images whose prompt scores above ``distractors`` other distinct prompts of the set (fewer when the
    set has fewer), drawn per image with ``seed``."""
    images, prompts = pairs(images, prompts)
    unique = list(dict.fromkeys(prompts))
    if len(unique) < 2:
        raise ValueError("R-precision needs at least two distinct prompts")
    img, txt = embed_images(model, images), embed_texts(model, unique)
    own = torch.tensor([unique.index(p) for p in prompts])
    hits = 0
    for i in range(len(prompts)):
        rng = np.random.default_rng([seed, i])
        others = np.delete(np.arange(len(unique)), own[i].item())
        pick = rng.choice(others, min(distractors, len(others)), replace=False)
        sims = txt[torch.from_numpy(pick)] @ img[i]
        hits += int(bool((txt[own[i]] @ img[i] > sims).all()))
    return hits / len(prompts)


def clip_i(model: CLIP, images: Any, reference: Any) -> float:
    """Mean cosine over all pairs (generated, reference) of image embeddings: DreamBooth's CLIP-I."""
    a, b = embed_images(model, images), embed_images(model, reference, name="reference images")
    return float((a @ b.T).double().mean())


def zero_shot(model: CLIP, images: Any, class_prompts: Sequence[str], labels: Any) -> dict[str, Any]:
    """``accuracy`` of the nearest class prompt against ``labels`` ``(N,)`` (indices into ``class_prompts``) and
    the ``predictions``."""
    y = torch.as_tensor(np.asarray(labels)).long()
    if y.ndim != 1 or len(y) != len(images) or (y < 0).any() or (y >= len(class_prompts)).any():
        raise ValueError(f"labels must be ({len(images)},) indices into the {len(class_prompts)} class prompts")
    pred = (embed_images(model, images) @ embed_texts(model, class_prompts).T).argmax(1)
    return {"accuracy": float((pred == y).double().mean()), "predictions": pred}


def clip_metrics(images: Any, prompts: Sequence[str], model: CLIP | None = None) -> dict[str, Any]:
    """What ``denoisekit eval --clip`` reports for samples with prompts: ``clip_score`` (+ ``clip_score_std``),
    ``r_precision`` (when the prompts are not all one) and the model used."""
    model = model or clip_model()
    s = clip_score(model, images, prompts)
    out: dict[str, Any] = {"clip_score": s["score"], "clip_score_std": s["std"], "n": len(prompts)}
    if len(set(prompts)) > 1:
        out["r_precision"] = r_precision(model, images, prompts)
    out["clip_model"] = {k: model.info.get(k) for k in ("folder", "key", "heldout_recall")}
    return out


class CLIPEnergy:
    """``energy(y, sigma, prompts) -> (B,)``: a noise-aware CLIP's logit ``exp(t) cos(f(y, sigma), g(prompt))`` of
    VE-frame images ``y`` ``(B, 3, H, W)`` (resized differentiably to the CLIP's size), for
    :class:`~denoisekit.guidance.CLIPGuidance`; prompt embeddings are kept per prompt."""

    def __init__(self, model: CLIP):
        if not model.config.noise_aware:
            raise ValueError("CLIP guidance needs the noise-aware CLIP (clip_model(NOISY_CONFIG); 'make clip' "
                             "builds both): the metric one has never seen a noisy image")
        self.model, self.texts = model, {}

    def text(self, prompts: Sequence[str], device: Any) -> Tensor:
        todo = [p for p in dict.fromkeys(prompts) if p not in self.texts]
        if todo:
            self.texts.update(zip(todo, embed_texts(self.model, todo)))
        return torch.stack([self.texts[p] for p in prompts]).to(device)

    def __call__(self, y: Tensor, sigma: Tensor, prompts: Sequence[str]) -> Tensor:
        size = self.model.config.image_size
        if y.shape[-2:] != (size, size):
            y = resize_images(y, size)
        dev = next(self.model.parameters()).device
        img = self.model.encode_image(y.to(dev, torch.float32), sigma.to(dev, torch.float32))
        return (self.model.scale() * (img * self.text(prompts, dev)).sum(-1)).to(y.device)


def format_clip_metrics(m: dict[str, Any]) -> str:
    """A short block of :func:`clip_metrics` for the terminal."""
    lines = [f"CLIP score {m['clip_score']:.2f} (std {m['clip_score_std']:.2f}) over {m['n']} images"]
    if "r_precision" in m:
        lines.append(f"CLIP R-precision {m['r_precision']:.4f}")
    lines.append(f"CLIP model: {m['clip_model'].get('folder')}")
    return "\n".join(lines)
