"""The FID feature network's model: its config, the small CNN classifier whose penultimate layer gives the
features, the cache file names and the cache key. Trained by :mod:`denoisekit.eval.feature_recipe`, loaded and
used by :mod:`denoisekit.eval.features`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import SampleDropout

FORMAT = "denoisekit.feature_classifier/1"
WEIGHTS_FILE, META_FILE = "model.safetensors", "meta.json"


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training of a :class:`FeatureClassifier` (all of it enters the cache key)."""

    image_size: int = 16       # inputs of any size are resized (bilinear, antialiased) to this
    width: int = 16            # channels of the first stage, doubled per downsampling (capped at 4x)
    feature_dim: int = 128     # width of the penultimate layer: the feature dimension
    dropout: float = 0.2
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    shift: int = 1             # augmentation: random translation by up to this many pixels at image_size
    noise: float = 0.05        # augmentation: Gaussian pixel noise std, so slightly noisy samples classify
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")
        for f in ("width", "feature_dim", "epochs", "batch_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def resize_images(x: Tensor, size: int) -> Tensor:
    """Images ``(N, C, H, W)`` at ``size`` x ``size`` (bilinear, antialiased); unchanged when they are already."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class FeatureClassifier(nn.Module):
    """A VGG-style CNN: stages of two 3x3 conv-BN-ReLU and a 2x2 max pool down to 4x4, a conv, global average
    pool, a ``feature_dim`` ReLU layer (the features), and one linear head per label.

    ``num_classes``: an int (one label per image) or a sequence (several heads, e.g. attributes).
    """

    def __init__(self, in_channels: int, num_classes: int | Sequence[int],
                 config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config, self.in_channels = config, in_channels
        self.multi_head = not isinstance(num_classes, int)
        self.num_classes = [int(c) for c in num_classes] if self.multi_head else [int(num_classes)]
        if not self.num_classes or min(self.num_classes) < 2:
            raise ValueError(f"every head needs >= 2 classes, got {num_classes}")
        self.out_dim = config.feature_dim
        layers, c = [], in_channels
        for i in range(int(math.log2(config.image_size)) - 2):      # image_size -> 4
            w = config.width * 2 ** min(i, 2)
            layers += [_block(c, w), _block(w, w), nn.MaxPool2d(2)]
            c = w
        layers += [_block(c, 2 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, config.feature_dim),
                   nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.dropout = SampleDropout(config.dropout)
        self.heads = nn.ModuleList(nn.Linear(config.feature_dim, k) for k in self.num_classes)
        self.info: dict[str, Any] = {}  # filled by training / loading: accuracy, timing, cache path
        #: The head whose classes are the dataset's labels (class accuracy and coverage in reports): the only one,
        #: or the one a built-in multi-head network names (None: no head is the label).
        self.label_head: int | None = None if self.multi_head else 0

    def _resize(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"this feature network expects (B, {self.in_channels}, H, W) images in [-1, 1], "
                             f"got shape {tuple(x.shape)}")
        return resize_images(x, self.config.image_size)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``(B, feature_dim)`` of images ``(B, C, H, W)`` in [-1, 1]."""
        return self.body(self._resize(x))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits, one ``(B, num_classes[k])`` tensor per head."""
        h = self.dropout(self.features(x))
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels: ``(B,)`` for a single head, ``(B, K)`` for ``K`` heads (eval mode)."""
        was = self.training
        self.eval()
        pred = torch.stack([lg.argmax(1) for lg in self(x)], 1)
        self.train(was)
        return pred if self.multi_head else pred[:, 0]


@torch.no_grad()


def cache_key(name: str, images: Tensor, labels: Tensor, num_classes: Any, config: ClassifierConfig) -> str:
    """Hex digest of everything the trained weights depend on: the data bytes, labels, classes and config."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "name": name, "num_classes": num_classes,
                         "config": dataclasses.asdict(config)}, sort_keys=True).encode())
    for t in (images, labels):
        t = torch.as_tensor(t).contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
