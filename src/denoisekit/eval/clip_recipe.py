"""Training the CLIP of :mod:`denoisekit.eval.clip` on the engine, and its cache entry.

:class:`CLIPRecipe` trains :class:`~denoisekit.models.clip.CLIP` (the image tower and the text projection; MiniLM
stays frozen, its pooled features computed once before training) on the pairs of
:func:`~denoisekit.eval.clip_data.training_pairs` with CLIP's symmetric InfoNCE and learned temperature
(Radford et al. 2021), AdamW with a linear warm-up over 10% of the steps then a cosine decay. A noise-aware run
(``model.noise_aware``; GLIDE's CLIP, Nichol et al. 2022, Sec. 3.3) sees each image at a VE noise level drawn
from the sample's own generator, ``ln sigma ~ N(p_mean, p_std^2)`` (EDM's training distribution, Karras et
al. 2022, widened), ``y = x0 + sigma eps``; so the weights depend on the seed only. The contrast is over each
process's micro-batch (CLIP all-gathers the embeddings of every device first): these runs train on one process,
and a multi-process run would contrast smaller batches, so it is not the same run as one process.

:meth:`CLIPRecipe.finish` measures image->text recall@1 on fresh renders and exports ``model.safetensors`` and
``meta.json`` (``format``, ``key``, config, facts) into the run directory; :func:`train_clip` runs it in this
process (:func:`~denoisekit.eval.feature_recipe.fit_in_process`: one thread, deterministic kernels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import randn
from ..engine import Recipe
from ..io import file_sha256, save_tensors_atomic, write_text_atomic
from ..models.clip import CLIP, CLIPConfig, clip_loss
from .clip_data import (
    TRAIN_SEED,
    emoji_available,
    heldout_shapes,
    text_features,
    training_pairs,
)
from .feature_recipe import FeatureData, FeatureOptim, FeatureTrain, fit_in_process

if TYPE_CHECKING:
    from ..engine.loop import Engine

FORMAT = "denoisekit.clip/1"
WEIGHTS_FILE, META_FILE = "model.safetensors", "meta.json"
WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class CLIPTraining:
    """The data and optimisation of a CLIP run (all of it, with :class:`CLIPConfig`, enters the cache key)."""

    shapes: int = 12000          # shapes renders (about 8,000 distinct captions)
    emoji: Literal["auto", "on", "off"] = "auto"
    emoji_repeat: int = 4
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    p_mean: float = -0.4         # noise-aware runs: ln sigma ~ N(p_mean, p_std^2) (VE frame)
    p_std: float = 1.6
    seed: int = 0
    heldout: int = 500           # fresh renders the finished run is measured on (recall, in meta.json)

    def __post_init__(self) -> None:
        for f in ("shapes", "epochs", "batch_size", "emoji_repeat"):
            if getattr(self, f) < 1:
                raise ValueError(f"clip training {f} must be >= 1, got {getattr(self, f)}")


@dataclass(frozen=True)
class CLIPRunConfig:
    """A CLIP run: the model and its training, and the engine's sections derived from them."""

    model: CLIPConfig
    training: CLIPTraining
    train: FeatureTrain
    optim: FeatureOptim
    data: FeatureData = field(default_factory=FeatureData)

    @classmethod
    def create(cls, model: CLIPConfig = CLIPConfig(), training: CLIPTraining = CLIPTraining(), n: int | None = None,
               **train: Any) -> CLIPRunConfig:
        """``training.epochs`` passes over ``n`` pairs (default: the shapes renders alone; emoji add to it)."""
        n = n or training.shapes
        batch = min(training.batch_size, n)
        steps = max(1, math.ceil(training.epochs * n / batch))
        return cls(model, training, FeatureTrain(steps=steps, batch_size=batch, seed=training.seed, **train),
                   FeatureOptim(lr=training.lr, weight_decay=training.weight_decay,
                                warmup_steps=round(WARMUP_FRACTION * steps), grad_clip=1.0))


def cache_key(model: CLIPConfig, training: CLIPTraining, seed: int = TRAIN_SEED) -> str:
    """Hash of the format, the configs, the render seed and the emoji font used (its SHA-256, or none), known
    before any rendering: what decides the training pairs and so the weights."""
    font = None
    if training.emoji == "on" or (training.emoji == "auto" and emoji_available()):
        from ..data.emoji import find_font

        font = file_sha256(find_font())
    return hashlib.sha256(json.dumps([FORMAT, dataclasses.asdict(model), dataclasses.asdict(training), seed, font],
                                     sort_keys=True).encode()).hexdigest()[:16]


class CLIPRecipe(Recipe):
    """A CLIP's run over uint8 ``images`` ``(N, S, S, 3)`` and their ``captions`` (see the module docstring)."""

    name = "clip"

    def __init__(self, config: CLIPRunConfig, images: np.ndarray, captions: Sequence[str], key: str,
                 facts: Mapping[str, Any] | None = None, text_cache: str | os.PathLike | None = None):
        super().__init__(config)
        self.images, self.captions, self.key = images, list(captions), key
        self.facts, self.text_cache = dict(facts or {}), text_cache

    def config_to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self.config)))

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(Path(path).read_text())

    def build_dataset(self) -> Any:
        from ..data.transforms import uint8_to_tensor
        from .feature_net import resize_images

        size = self.config.model.image_size
        unique = list(dict.fromkeys(self.captions))
        index = {c: i for i, c in enumerate(unique)}
        feats = text_features(unique, self.config.model.max_tokens, cache_dir=self.text_cache)
        x = torch.stack([uint8_to_tensor(im) for im in self.images])
        x = resize_images(x, size)
        return [{"image": x[i], "text": feats[index[c]], "group": index[c]} for i, c in enumerate(self.captions)]

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Any:
        return {"image": torch.stack([it["image"] for it in items]), "text": torch.stack([it["text"] for it in items]),
                "group": torch.tensor([it["group"] for it in items])}

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.training.seed)
            return {"clip": CLIP(self.config.model)}

    @property
    def network(self) -> CLIP:
        return self.modules["clip"]

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x, text = batch["image"].to(engine.device), batch["text"].to(engine.device)
        net, tc = self.module("clip"), self.config.training
        sigma = None
        if self.config.model.noise_aware:
            z = torch.stack([torch.randn((), generator=g) for g in gens]).to(engine.device)
            sigma = torch.exp(tc.p_mean + tc.p_std * z)
            x = x + sigma[:, None, None, None] * randn(x.shape, gens, device=x.device)
        img, txt = net(x, text, sigma)  # through the (process-wrapped) module's forward
        loss = clip_loss(img, txt, self.network.scale(), batch["group"]).mean()
        return {"loss": loss}

    @torch.no_grad()
    def finish(self, engine: Engine) -> None:
        from .clip_embed import retrieval

        net = self.network.eval()
        images, captions = heldout_shapes(self.config.training.heldout, self.config.model.image_size)
        r = retrieval(net, images, captions, ks=(1, 5), sigma=0.0 if self.config.model.noise_aware else None)
        info = {"heldout_recall": r, "n_train": len(self.captions), "train_seconds": engine.elapsed,
                "temperature": float(1 / net.scale()), **self.facts}
        meta = {"format": FORMAT, "key": self.key, "config": dataclasses.asdict(self.config.model),
                "training": dataclasses.asdict(self.config.training), "info": info, "torch": torch.__version__}
        save_tensors_atomic(engine.out / WEIGHTS_FILE, {k: v.contiguous() for k, v in net.state_dict().items()})
        write_text_atomic(engine.out / META_FILE, json.dumps(meta, indent=2) + "\n")  # last: a complete export


def train_clip(run_dir: str | os.PathLike[str], model: CLIPConfig = CLIPConfig(),
               training: CLIPTraining = CLIPTraining(), *, verbose: bool = False,
               text_cache: str | os.PathLike | None = None, seed: int = TRAIN_SEED, steps: int | None = None) -> Path:
    """Render the pairs, train a CLIP into ``run_dir`` (then holding ``model.safetensors`` and ``meta.json``);
    ``steps`` replaces the step count of ``training.epochs`` (a run so cut is not the cached model)."""
    images, captions, facts = training_pairs(training.shapes, model.image_size, training.emoji,
                                             training.emoji_repeat, seed)
    key = cache_key(model, training, seed)
    config = CLIPRunConfig.create(model, training, n=len(captions))
    if steps is not None:
        if steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {steps}")
        warmup = round(WARMUP_FRACTION * steps)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=steps),
                                     optim=dataclasses.replace(config.optim, warmup_steps=warmup))
        key = f"{key}-steps{steps}"
    return fit_in_process(CLIPRecipe(config, images, captions, key, facts, text_cache), run_dir, verbose=verbose)
