"""A small contrastive image-text model (Radford et al. 2021, "CLIP") over a frozen sentence encoder.

=============  ===========================================================================================
part           what
=============  ===========================================================================================
image tower    :class:`ImageEncoder`: stages of two 3x3 conv-GroupNorm-SiLU blocks and a 2x average pool
               down to 4x4, flattened (the layout stays in the embedding: positions are part of captions)
               and projected to ``embed_dim``. ``noise_aware``: the input is a VE-frame ``y = x0 + sigma
               eps`` scaled by ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` and every stage is modulated
               (scale and shift) by an embedding of ``c_noise = log(sigma) / 4`` (Karras et al. 2022,
               Table 1): GLIDE's noise-aware CLIP (Nichol et al. 2022, Sec. 3.3) in the one frame every
               process shares, so it guides any process.
text tower     the frozen MiniLM (:class:`~denoisekit.models.text.MiniLMEncoder`), its token states
               mean-pooled over the real tokens (the sentence-transformers pooling of all-MiniLM-L6-v2),
               then the learned :class:`TextProjection` (LayerNorm, a GELU MLP) to ``embed_dim``.
similarity     cosine of the L2-normalised embeddings; logits ``exp(logit_scale) * cos`` with the learned
               temperature initialised at 0.07 and ``exp(logit_scale)`` clipped at 100 (CLIP, Sec. 2.5).
=============  ===========================================================================================

:func:`clip_loss` is CLIP's symmetric InfoNCE (Figure 3 of Radford et al. 2021), with captions that occur
more than once in a batch (shapes captions repeat) treated as positives of each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import TimestepEmbedding

#: Width of the frozen MiniLM's token states (the text tower's input).
MINILM_DIM = 384
#: The smallest sigma a noise-aware encoder is told (``log`` of 0 is not a time): clean images use it.
SIGMA_MIN = 2e-3


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a :class:`CLIP` (all of it enters the cache key)."""

    image_size: int = 32        # images of another size are resized to this (with a warning by the metrics)
    in_channels: int = 3
    width: int = 32             # channels of the first stage, doubled per downsampling (capped at 4x)
    embed_dim: int = 128
    text_hidden: int = 512
    noise_aware: bool = False
    sigma_data: float = 0.5
    init_temperature: float = 0.07
    max_tokens: int = 32        # MiniLM tokens per prompt, [CLS] and [SEP] included; longer prompts are cut

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"clip image_size must be a power of two >= 8, got {self.image_size}")
        for f in ("width", "embed_dim", "text_hidden", "in_channels"):
            if getattr(self, f) < 1:
                raise ValueError(f"clip {f} must be >= 1, got {getattr(self, f)}")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"clip init_temperature must be in (0, 1), got {self.init_temperature}")


def _groups(c: int) -> int:
    return math.gcd(8, c)


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout)
        self.conv2, self.norm2 = nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout)
        self.film = nn.Linear(time_dim, 2 * cout) if time_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.film is not None and emb is not None:
            scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return F.avg_pool2d(F.silu(h), 2)


class ImageEncoder(nn.Module):
    """Images ``(B, C, S, S)`` (and, noise-aware, VE sigmas ``(B,)``) -> embeddings ``(B, embed_dim)``."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        time_dim = 4 * config.width if config.noise_aware else 0
        self.time = TimestepEmbedding(time_dim) if config.noise_aware else None
        stages, c = [], config.in_channels
        for i in range(int(math.log2(config.image_size)) - 2):  # image_size -> 4
            w = config.width * 2 ** min(i, 2)
            stages.append(_Stage(c, w, time_dim))
            c = w
        self.stages = nn.ModuleList(stages)
        self.proj = nn.Linear(c * 16, config.embed_dim)

    def forward(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        emb = None
        if self.time is not None:
            s = torch.full((x.shape[0],), SIGMA_MIN, device=x.device) if sigma is None \
                else torch.as_tensor(sigma, device=x.device).float().expand(x.shape[0]).clamp(min=SIGMA_MIN)
            x = x / torch.sqrt(s**2 + self.config.sigma_data**2)[:, None, None, None].to(x)
            emb = F.silu(self.time(torch.log(s) / 4))
        for stage in self.stages:
            x = stage(x, emb)
        return self.proj(x.flatten(1))


class TextProjection(nn.Module):
    """Pooled frozen-encoder features ``(B, text_dim)`` -> embeddings ``(B, embed_dim)``."""

    def __init__(self, config: CLIPConfig, text_dim: int = MINILM_DIM):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, config.text_hidden), nn.GELU(),
                                 nn.Linear(config.text_hidden, config.embed_dim))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def mean_pool(context: Tensor, mask: Tensor) -> Tensor:
    """``(B, L, D)`` token states and their ``(B, L)`` mask -> ``(B, D)`` mean over the real tokens."""
    m = mask.to(context.dtype)[..., None]
    return (context * m).sum(1) / m.sum(1).clamp(min=1)


class CLIP(nn.Module):
    """The two towers and the learned temperature; text enters as pooled frozen features (see
    :func:`mean_pool`), so the frozen encoder stays outside ``state_dict`` and checkpoints."""

    def __init__(self, config: CLIPConfig = CLIPConfig(), text_dim: int = MINILM_DIM):
        super().__init__()
        self.config = config
        self.image = ImageEncoder(config)
        self.text = TextProjection(config, text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.info: dict[str, Any] = {}  # filled when trained or loaded: accuracy, config, cache

    def encode_image(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        """L2-normalised image embeddings ``(B, E)``; ``sigma`` (VE frame) only for a noise-aware model."""
        if sigma is not None and not self.config.noise_aware:
            raise ValueError("this CLIP was trained on clean images; sigma needs a noise-aware one")
        s = None if sigma is None else torch.as_tensor(sigma, device=x.device)
        return F.normalize(self.image(x, s), dim=-1)

    def encode_text(self, features: Tensor) -> Tensor:
        """L2-normalised text embeddings ``(B, E)`` of pooled frozen-encoder features ``(B, text_dim)``."""
        return F.normalize(self.text(features), dim=-1)

    def forward(self, x: Tensor, text_features: Tensor, sigma: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalised ``(image, text)`` embeddings ``(B, E)`` each: the pair the loss contrasts."""
        return F.normalize(self.image(x, sigma), dim=-1), self.encode_text(text_features)

    def scale(self) -> Tensor:
        """``exp(logit_scale)``, at most 100 (CLIP clips it there to keep training stable)."""
        return self.logit_scale.clamp(max=math.log(100)).exp()


def clip_loss(image_emb: Tensor, text_emb: Tensor, scale: Tensor, groups: Sequence[int] | Tensor | None = None
              ) -> Tensor:
    """Symmetric InfoNCE of normalised embeddings ``(B, E)``: the mean of the image->text and text->image
    cross-entropies of the logits ``scale * image_emb @ text_emb.T`` (Radford et al. 2021, Figure 3).

    ``groups`` ``(B,)``: ids of the captions; pairs with equal ids are all positives (the target spreads
    evenly over them), so a caption that occurs twice in the batch is not pushed away from itself. None:
    every pair is its own group (CLIP's ``labels = arange(B)``)."""
    logits = scale * image_emb @ text_emb.T
    n = logits.shape[0]
    if groups is None:
        target = torch.eye(n, device=logits.device, dtype=logits.dtype)
    else:
        g = torch.as_tensor(groups, device=logits.device)
        target = (g[:, None] == g[None, :]).to(logits.dtype)
    target = target / target.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(1)
    loss_t = -(target.T * F.log_softmax(logits.T, dim=1)).sum(1)
    return (loss_i + loss_t) / 2
