"""Latent diffusion: the diffusion model learns the scaled latents of a frozen KL autoencoder.

Rombach et al. 2022 ("LDM", Sec. 3 and 4.3.2): a first-stage autoencoder maps an image ``x (C, H, W)``
to ``z = (E(x) - shift) * scale_factor`` of shape ``(latent_channels, H/f, W/f)``; the diffusion model
is trained on ``z`` exactly as on pixels (the noising, losses, samplers and guidance do not change),
and a sample ``z`` becomes an image ``D(z / scale_factor + shift)``. A run's ``latent`` config section
(:class:`~denoisekit.train.config.LatentConfig`) names the autoencoder directory; the :class:`Trainer` then
wraps its dataset in a :class:`LatentDataset`, so ``image_shape`` is the latent shape, the checkpoints
record the autoencoder (:func:`latent_record`), sample grids are decoded, and ``denoisekit sample``
decodes with :func:`load_latent_decoder`. ``load_run`` and a metrics hook see the latent-space denoiser.

Every image is encoded once (batched, no gradients) and kept in memory; with a disk cache the
latents are also stored in ``<cache_dir>/<key>.safetensors``, ``key`` hashing the autoencoder's
weights (:func:`weights_sha256`), the dataset's identity (its config), length and a few of its images,
so the next run with the same data skips the encoder. Consequences of encoding once:

- augmentations are not re-drawn: the images are encoded as the dataset gives them with no random
  flips (a dataset with ``flip_p > 0`` is refused rather than trained on one frozen draw of flips);
- with ``sample_posterior`` the posterior mean and standard deviation are cached and each item draws
  a fresh ``z = mean + std * eps`` whose noise is a function of ``(seed, epoch, index)`` (the trainer's
  data stream calls :meth:`LatentDataset.set_epoch`), so resumed runs stay exact; without it the
  posterior mode is used, as ``Autoencoder.encode_latents(x)`` gives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..models.autoencoder import Autoencoder
from ..generation.model import decode  # noqa: F401  (decode lives with generation; re-exported)
from ..io import default_cache_dir, load_json, load_tensors, save_tensors, write_atomic
from ..engine.stream import stream_seeds

CACHE_FORMAT = "denoisekit.latents/1"
_POSTERIOR = 0x706F7374  # stream tag "post": the noise of posterior samples
#: Images of the source dataset hashed into the cache key (besides its config and length).
_PROBES = 4


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's ``state_dict`` (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def encode_posterior(autoencoder: Autoencoder, dataset: Any, *, batch_size: int = 64,
                     progress: bool = False) -> tuple[Tensor, Tensor]:
    """Scaled posterior ``(mean, std)``, each ``(N, latent_channels, h, w)`` float32 on the CPU, of every
    ``dataset[i]["image"]``: ``mean = (mu - shift) * scale_factor``, ``std = sigma * scale_factor``."""
    from tqdm.auto import tqdm

    p = next(autoencoder.parameters())
    scale, shift = autoencoder.scale_factor, autoencoder.shift
    means, stds = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="encode latents", disable=not progress):
        x = torch.stack([torch.as_tensor(dataset[i]["image"])
                         for i in range(start, min(len(dataset), start + batch_size))])
        post = autoencoder.encode(x.to(p.device, p.dtype))
        # the same arithmetic as Autoencoder.encode_latents (scale and shift are float64 buffers)
        means.append(((post.mean - shift) * scale).to(post.mean.dtype).float().cpu())
        stds.append((post.std * scale).to(post.std.dtype).float().cpu())
    return torch.cat(means), torch.cat(stds)


class LatentDataset(Dataset):
    """``dataset`` with every ``image`` replaced by its scaled latent ``(latent_channels, H/f, W/f)``.

    Items are the source dataset's dicts (``label``, ``caption`` and any other field kept; the source is
    still read per item for them) with ``image`` from the in-memory latents. ``identity`` (a JSON-able
    description of the data, e.g. its config) and ``cache_dir`` turn on the disk cache (module
    docstring); ``seed`` drives the posterior samples of ``sample_posterior``.
    """

    def __init__(self, dataset: Any, autoencoder: Autoencoder, *, sample_posterior: bool = False, seed: int = 0,
                 identity: Any = None, cache_dir: str | os.PathLike[str] | None = None, batch_size: int = 64,
                 progress: bool = False):
        if len(dataset) < 1:
            raise ValueError("LatentDataset: the dataset is empty")
        flip = getattr(getattr(dataset, "config", None), "flip_p", 0.0)
        if flip:
            raise ValueError(f"latent diffusion encodes each image once, so random flips (flip_p={flip}) cannot "
                             "be re-drawn per epoch: set data.flip_p=0")
        c = autoencoder.config
        shape = tuple(torch.as_tensor(dataset[0]["image"]).shape)
        if len(shape) != 3 or shape[0] != c.in_channels or shape[1] % c.factor or shape[2] % c.factor:
            raise ValueError(f"the autoencoder (in_channels={c.in_channels}, factor={c.factor}) cannot encode "
                             f"images of shape {shape}: channels must match and H, W be divisible by {c.factor}")
        self.dataset, self.autoencoder = dataset, autoencoder
        self.sample_posterior, self.seed, self.epoch = sample_posterior, seed, 0
        self.latent_shape = c.latent_shape(shape[1], shape[2])
        self.image_shape = shape
        self.classes = getattr(dataset, "classes", None)
        self.record: dict[str, Any] | None = None  # set by latent_dataset: what a run's checkpoints keep
        self.cache_path = (Path(cache_dir) / f"{self._key(identity)}.safetensors"
                           if cache_dir is not None and identity is not None else None)
        cached = self._read_cache() if self.cache_path is not None else None
        if cached is None:
            cached = encode_posterior(autoencoder, dataset, batch_size=batch_size, progress=progress)
            if self.cache_path is not None:
                self._write_cache(*cached)
        self.mean: Tensor = cached[0]
        self.std: Tensor | None = cached[1] if sample_posterior else None

    def __len__(self) -> int:
        return len(self.mean)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose posterior samples items draw (``sample_posterior``; otherwise no effect)."""
        self.epoch = epoch

    def latent(self, index: int) -> Tensor:
        """The scaled latent of item ``index``: the posterior mode, or this epoch's posterior sample."""
        if self.std is None:
            return self.mean[index]
        g = torch.Generator().manual_seed(int(stream_seeds(self.seed, _POSTERIOR, self.epoch * len(self) + index)[0]))
        return self.mean[index] + self.std[index] * torch.randn(self.mean.shape[1:], generator=g)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        return {**self.dataset[index], "image": self.latent(index)}

    # -- disk cache -------------------------------------------------------------------------------
    def _key(self, identity: Any) -> str:
        h = hashlib.sha256()
        n = len(self.dataset)
        doc = {"format": CACHE_FORMAT, "autoencoder": weights_sha256(self.autoencoder), "data": identity, "n": n}
        h.update(json.dumps(doc, sort_keys=True, default=str).encode())
        for i in sorted({round(k * (n - 1) / max(1, _PROBES - 1)) for k in range(_PROBES)}):
            h.update(torch.as_tensor(self.dataset[i]["image"]).float().contiguous().numpy().tobytes())
        return h.hexdigest()[:32]

    def _read_cache(self) -> tuple[Tensor, Tensor] | None:
        assert self.cache_path is not None
        if not self.cache_path.is_file():
            return None
        try:
            t = load_tensors(self.cache_path)
            want = (len(self.dataset), *self.latent_shape)
            if tuple(t["mean"].shape) != want or tuple(t["std"].shape) != want:
                raise ValueError(f"{self.cache_path}: latents of shape {tuple(t['mean'].shape)}, expected {want}")
        except (ValueError, KeyError) as e:
            warnings.warn(f"ignoring the latent cache {self.cache_path} ({e}); encoding again")
            return None
        return t["mean"], t["std"]

    def _write_cache(self, mean: Tensor, std: Tensor) -> None:
        assert self.cache_path is not None
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.cache_path, lambda p: save_tensors(p, {"mean": mean, "std": std},
                                                                 {"format": CACHE_FORMAT}))
        except OSError as e:  # a read-only cache costs an encoding next time, not this run
            warnings.warn(f"cannot write the latent cache {self.cache_path} ({e})")


# ------------------------------------------------------------------------------------------------ runs

def open_autoencoder(path: str | os.PathLike[str]) -> tuple[Autoencoder, tuple[int, ...] | None]:
    """The autoencoder in directory ``path`` and the image shape ``(C, H, W)`` it was trained on (None if
    not recorded). Missing or corrupt files raise ``FileNotFoundError`` / ``ValueError`` naming them."""
    from .autoencoder_io import META, load_autoencoder

    ae = load_autoencoder(path)
    p = Path(path)
    meta = load_json((p.parent if p.name == META else p) / META)
    shape = meta.get("image_shape")
    return ae, tuple(int(v) for v in shape) if isinstance(shape, list) else None


def _model_channels(config: Any) -> tuple[int | None, int | None]:
    """The diffusion network's ``in_channels`` and ``out_channels`` (given or defaulted), where it has them."""
    from ..options import option_schema

    from .config import ModelConfig

    _, _, cls = option_schema(ModelConfig.entry(config.model.name))
    opts = config.model.options

    def value(name: str) -> int | None:
        v = opts.get(name, getattr(cls, name, None) if cls is not None else None)
        return v if isinstance(v, int) else None

    return value("in_channels"), value("out_channels")


def latent_dataset(config: Any, dataset: Any, *, device: Any = "cpu", progress: bool = False) -> LatentDataset:
    """A run's dataset in the latent space of ``config.latent.autoencoder`` (a :class:`LatentDataset` whose
    ``autoencoder`` is on ``device`` and ``record`` is :func:`latent_record`), after checking that the
    autoencoder loads, was trained on images like the dataset's, and that the model takes its latents."""
    from ..options import plain

    lc = config.latent
    try:
        ae, trained = open_autoencoder(lc.autoencoder)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"latent.autoencoder: {e} (make one with 'denoisekit train-autoencoder CONFIG --out "
                      f"{lc.autoencoder}')") from None
    shape = tuple(torch.as_tensor(dataset[0]["image"]).shape)
    if trained is not None and shape != trained:
        raise ValueError(f"dataset {config.data.name!r} yields images of shape {shape} but the autoencoder "
                         f"{lc.autoencoder} was trained on {trained}: change the data options (size, channels) "
                         f"to match, or train an autoencoder on these images")
    c = ae.config
    latent = c.latent_shape(shape[1], shape[2]) if len(shape) == 3 else None
    got_in, got_out = _model_channels(config)
    for key, got in (("in_channels", got_in), ("out_channels", got_out)):
        if latent is not None and got is not None and got != latent[0]:
            raise ValueError(f"model.{key} is {got}, but the autoencoder {lc.autoencoder} makes latents of shape "
                             f"{latent} (latent_channels={c.latent_channels}, {shape[1]}/{c.factor} x "
                             f"{shape[2]}/{c.factor}): set model.{key}={latent[0]}")

    wrapped = LatentDataset(dataset, ae.to(device), sample_posterior=lc.sample_posterior, seed=config.train.seed,
                            identity={"name": config.data.name, "options": plain(config.data.options)},
                            cache_dir=default_cache_dir() / "latents" if lc.cache else None, progress=progress)
    wrapped.record = latent_record(lc.autoencoder, ae, shape, wrapped.latent_shape)
    return wrapped


def latent_record(path: str | os.PathLike[str], autoencoder: Autoencoder, image_shape: tuple[int, ...],
                  latent_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a checkpoint's ``state.json`` keeps under ``latent``: the autoencoder's path as configured
    and resolved, its weights' SHA-256, and the image and latent shapes."""
    return {"autoencoder": str(path), "resolved": str(Path(path).resolve()), "sha256": weights_sha256(autoencoder),
            "image_shape": list(image_shape), "latent_shape": list(latent_shape)}


def check_latent_resume(checkpoint: Path, state: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """Refuse to resume a run whose autoencoder weights changed since ``checkpoint`` was written."""
    old = (state.get("latent") or {}).get("sha256")
    if old is not None and old != record["sha256"]:
        raise ValueError(f"cannot resume from {checkpoint}: the autoencoder {record['autoencoder']} has changed "
                         f"since (weights sha256 {old[:12]}... then, {record['sha256'][:12]}... now)")
