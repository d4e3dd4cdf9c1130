"""A feature network for any image set: trained on the reference images themselves, self-supervised.

FID needs features that separate what matters in the data; with no labels and no ImageNet network, a small
CNN learns them by contrast (SimCLR, Chen et al. 2020, Algorithm 1): two random views of each image
(random-resized crop, horizontal flip, colour jitter, pixel noise) pass the encoder and a 2-layer projection
head, and the NT-Xent loss (eq. 1) pulls each pair together against the other 2(B-1) views of the batch.
The features are the encoder's output before the projection head (Chen et al. 2020, Sec. 4.2). The
augmentations are kept mild on purpose: the features become invariant to what is augmented, and blur,
strong noise or colour shifts in samples must stay visible.

:class:`SelfSupRecipe` is a run on the engine (each view drawn from its sample's generator, GroupNorm
instead of BatchNorm so no statistic depends on how a batch is split); :func:`selfsup_feature_network`
trains it on first use and caches it under ``features/selfsup-<key>/``, the key hashing the reference
images tensor and the config (:func:`selfsup_key`), so a second evaluation of the same data is instant.
The negatives of NT-Xent are the views of one micro-batch, so ``grad_accum`` and process count change
the loss; the run always trains on one CPU process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import randn
from ..engine import Recipe
from ..engine.checkpoint import load_weights
from ..io import default_cache_dir, save_tensors_atomic, write_text_atomic
from .feature_net import META_FILE, WEIGHTS_FILE, resize_images
from .feature_recipe import WARMUP_FRACTION, FeatureData, FeatureOptim, FeatureTrain, fit_in_process
from .features import store_in_cache

if TYPE_CHECKING:
    from ..engine.loop import Engine as EngineT

FORMAT = "denoisekit.selfsup_features/1"


@dataclass(frozen=True)
class SelfSupConfig:
    """Encoder, augmentations and training of the self-supervised feature network (all of it in the cache key)."""

    image_size: int = 32       # inputs of any size are resized (bilinear, antialiased) to this
    width: int = 16            # channels of the first stage, doubled per downsampling (capped at 4x)
    feature_dim: int = 128     # the features: the encoder's output
    proj_dim: int = 64         # the projection head's output, where the loss is computed
    steps: int = 200
    batch_size: int = 64       # images per step (2x views); capped at the number of images
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2   # NT-Xent tau; small batches favour a lower one (Chen et al. 2020, Table 5)
    crop_scale: float = 0.6    # random-resized crop: area fraction in [crop_scale, 1], square
    flip: bool = True
    jitter: float = 0.2        # brightness, contrast and saturation factors in [1 - jitter, 1 + jitter]
    noise: float = 0.03        # Gaussian pixel noise std (in [-1, 1] units)
    seed: int = 0

    def __post_init__(self):
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")
        for f in ("width", "feature_dim", "proj_dim", "steps", "batch_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.SiLU())


class SelfSupEncoder(nn.Module):
    """A small CNN: a 3x3 stem, then per stage a stride-2 and a plain 3x3 conv-GroupNorm-SiLU down to 4x4,
    global average pool and a linear layer to ``feature_dim`` (the embedding); ``project`` is SimCLR's
    2-layer head.

    Features for metrics (:meth:`features`) are the embedding beside the spatial mean and standard deviation
    of every channel of the stem and the first stage: contrastive training makes the embedding blind to
    low-level detail, which these statistics keep (blur lowers, noise raises their spatial spread). Each of
    the three groups is scaled to unit total variance over the training images (``group_scale``, set after
    training), so each weighs the same in a distance.
    """

    def __init__(self, in_channels: int, config: SelfSupConfig = SelfSupConfig()):
        super().__init__()
        self.config, self.in_channels = config, in_channels
        c = config.width
        self.stem = _block(in_channels, c, 1)
        stages, widths = [], [c]
        for i in range(int(math.log2(config.image_size)) - 2):      # image_size -> 4
            w = config.width * 2 ** min(i + 1, 2)
            stages.append(nn.Sequential(_block(c, w, 2), _block(w, w, 1)))
            c = w
            widths.append(w)
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, config.feature_dim))
        self.project = nn.Sequential(nn.Linear(config.feature_dim, config.feature_dim), nn.ReLU(),
                                     nn.Linear(config.feature_dim, config.proj_dim))
        self.register_buffer("group_scale", torch.ones(3))
        self.out_dim = 2 * (widths[0] + widths[1]) + config.feature_dim
        self.info: dict[str, Any] = {}  # filled by training / loading: what it was trained on, timing, cache

    def _check(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"this feature network expects (B, {self.in_channels}, H, W) images in [-1, 1], "
                             f"got shape {tuple(x.shape)}")
        return resize_images(x, self.config.image_size)

    def feature_groups(self, x: Tensor) -> list[Tensor]:
        """Unscaled ``[stem statistics (B, 2c), first-stage statistics (B, 2c'), embedding (B, feature_dim)]``."""
        h = self.stem(self._check(x))
        groups = [torch.cat([h.mean((2, 3)), h.std((2, 3), correction=0)], 1)]
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == 0:
                groups.append(torch.cat([h.mean((2, 3)), h.std((2, 3), correction=0)], 1))
        return groups + [self.head(h)]

    def features(self, x: Tensor) -> Tensor:
        """Features ``(B, out_dim)`` of images ``(B, C, H, W)`` in [-1, 1] (resized to ``image_size``)."""
        return torch.cat([g * s for g, s in zip(self.feature_groups(x), self.group_scale)], 1)

    def forward(self, x: Tensor) -> Tensor:
        """Projections ``(B, proj_dim)`` of the embedding, where the contrastive loss is computed."""
        h = self.stem(self._check(x))
        for stage in self.stages:
            h = stage(h)
        return self.project(self.head(h))

    @torch.no_grad()
    def set_group_scale(self, x: Tensor, batch_size: int = 256) -> None:
        """``group_scale``: one over the root total variance of each feature group over images ``x``."""
        was = self.training
        self.eval()
        parts = [self.feature_groups(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        groups = [torch.cat(g).double() for g in zip(*parts)]
        self.group_scale.copy_(torch.stack([g.var(0).sum().clamp_min(1e-12).rsqrt() for g in groups]).float())
        self.train(was)


def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """NT-Xent of Chen et al. 2020, eq. 1, over ``z`` ``(2B, D)`` whose rows ``i`` and ``i + B`` are one
    image's two views: cross-entropy of each view's cosine similarities (over tau) against its partner."""
    b = z.shape[0] // 2
    z = F.normalize(z, dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, target)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_views(x: Tensor, config: SelfSupConfig, gens: Sequence[torch.Generator]) -> Tensor:
    """One random view ``(B, C, H, W)`` of each image, its crop, flip, jitter and noise drawn from its generator."""
    c = config
    thetas, colour = [], []
    for g in gens:
        side = math.sqrt(_uniform(g, c.crop_scale, 1.0))           # crop side as a fraction of the image
        tx, ty = (_uniform(g, side - 1, 1 - side) for _ in range(2))
        sx = -side if c.flip and float(torch.rand((), generator=g)) < 0.5 else side
        thetas.append([[sx, 0.0, tx], [0.0, side, ty]])
        colour.append([_uniform(g, 1 - c.jitter, 1 + c.jitter) for _ in range(3)])
    theta = torch.tensor(thetas, dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright, contrast, sat = torch.tensor(colour, dtype=x.dtype, device=x.device).T[..., None, None, None]
    v = (v + 1) / 2 * bright                                          # brightness in [0, 1] units
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * contrast + mean
    if v.shape[1] == 3:
        grey = (v * torch.tensor([0.299, 0.587, 0.114], device=x.device)[:, None, None]).sum(1, keepdim=True)
        v = (v - grey) * sat + grey
    v = v.clamp(0, 1) * 2 - 1
    if c.noise > 0:
        v = v + c.noise * randn(v.shape, gens, device=x.device)
    return v


@dataclass(frozen=True)
class SelfSupRunConfig:
    """A self-supervised feature-network run: the network (``network``), the data's identity (``name``,
    ``key``) and the engine's sections derived from them."""

    network: SelfSupConfig
    name: str
    key: str
    train: FeatureTrain
    optim: FeatureOptim
    data: FeatureData = field(default_factory=FeatureData)

    @classmethod
    def create(cls, network: SelfSupConfig, name: str, images: Tensor) -> SelfSupRunConfig:
        s = network.steps
        return cls(network, name, selfsup_key(images, network),
                   FeatureTrain(steps=s, batch_size=min(network.batch_size, len(images)), seed=network.seed),
                   FeatureOptim(lr=network.lr, weight_decay=network.weight_decay,
                                warmup_steps=round(WARMUP_FRACTION * s)))


def selfsup_key(images: Tensor, config: SelfSupConfig) -> str:
    """Hex digest (16 characters) of the sha256 of the images tensor (dtype, shape, bytes) and the config."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, "config": dataclasses.asdict(config)}, sort_keys=True).encode())
    t = images.detach().cpu().contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


class SelfSupRecipe(Recipe):
    """SimCLR on ``images`` ``(N, C, H, W)`` in [-1, 1]; ``finish`` exports the encoder into the run directory."""

    name = "selfsup_features"

    def __init__(self, config: SelfSupRunConfig, images: Tensor):
        super().__init__(config)
        self.images = images

    def config_to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self.config)))

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(Path(path).read_text())

    def build_dataset(self) -> Any:
        xs = resize_images(self.images, self.config.network.image_size)  # once: views are cut at the network's size
        return [{"image": x} for x in xs]

    def build(self, engine: EngineT) -> dict[str, nn.Module]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.network.seed)
            return {"net": SelfSupEncoder(self.images.shape[1], self.config.network)}

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: EngineT) -> dict[str, Tensor]:
        c = self.config.network
        x = batch["image"].to(engine.device)
        views = torch.cat([random_views(x, c, gens), random_views(x, c, gens)])  # rows i, i + B: image i
        return {"loss": nt_xent(self.module("net")(views), c.temperature)}

    def weights(self) -> dict[str, Tensor]:
        return dict(self.modules["net"].state_dict())

    def load_weights(self, tensors: Mapping[str, Tensor], source: str) -> None:
        load_weights(self.modules["net"], tensors, source)

    def finish(self, engine: EngineT) -> None:
        net, c = self.modules["net"], self.config
        net.set_group_scale(torch.stack([it["image"] for it in engine.dataset]).to(engine.device))
        meta = {"format": FORMAT, "key": c.key, "name": c.name, "in_channels": net.in_channels,
                "n_images": len(self.images), "image_shape": list(self.images.shape[1:]),
                "config": dataclasses.asdict(c.network), "info": {"train_seconds": engine.elapsed},
                "torch": torch.__version__}
        save_tensors_atomic(engine.out / WEIGHTS_FILE, {k: v.contiguous() for k, v in net.state_dict().items()})
        write_text_atomic(engine.out / META_FILE, json.dumps(meta, indent=2) + "\n")  # last: marks a complete export


def _load(folder: Path, key: str) -> SelfSupEncoder:
    from safetensors.torch import load_file

    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError(f"format/key mismatch in {folder / META_FILE}")
    net = SelfSupEncoder(meta["in_channels"], SelfSupConfig(**meta["config"]))
    net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    net.info = {**meta["info"], "name": meta["name"], "key": key, "n_images": meta["n_images"]}
    return net.eval().requires_grad_(False)


def selfsup_feature_network(images: Tensor, name: str = "reference", config: SelfSupConfig = SelfSupConfig(), *,
                            cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> SelfSupEncoder:
    """The self-supervised encoder of ``images`` ``(N, C, H, W)`` in [-1, 1] (``name``: what they are, for
    reports): loaded from ``cache_dir/features/selfsup-<key>/`` or trained there first (SimCLR on the engine,
    deterministic from ``config.seed``). ``net.info``: ``key``, ``cache``, ``cache_status`` (``loaded`` or
    ``trained``), ``train_seconds``."""
    if images.shape[0] < 2:
        raise ValueError(f"a self-supervised feature network needs at least 2 reference images, got {images.shape[0]}")
    key = selfsup_key(images, config)
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "features" \
        / f"selfsup-{key}"
    if (folder / META_FILE).exists():
        try:
            net = _load(folder, key)
            net.info.update(name=name, cache=str(folder), cache_status="loaded")
            return net
        except Exception as e:  # corrupt or partial files: json, safetensors and torch raise their own types
            import warnings

            warnings.warn(f"feature network cache {folder} is unreadable ({type(e).__name__}: {e}); retraining",
                          stacklevel=2)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="denoisekit-selfsup-") as tmp:
        run = Path(tmp) / "run"
        fit_in_process(SelfSupRecipe(SelfSupRunConfig.create(config, name, images), images), run, verbose=verbose)
        net = _load(run, key)
        store_in_cache(run, folder)
    net.info.update(name=name, cache=str(folder), cache_status="trained", wall_seconds=time.perf_counter() - t0)
    return net
