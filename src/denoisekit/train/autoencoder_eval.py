"""How well an autoencoder reconstructs held-out images: PSNR and reconstruction FID (rFID).

rFID (Rombach et al. 2022, Tab. 8) is the Frechet distance (Heusel et al. 2017) between the features of
images and of their reconstructions. Its feature network here needs no download:

- ``digits``: the cached digits classifier of :mod:`denoisekit.eval.features` (any built-in
  ``FEATURE_NETWORKS`` entry is used for its dataset);
- ``shapes``: :func:`shapes_feature_network`, a :class:`~denoisekit.eval.features.FeatureClassifier`
  trained (once, then cached) on shapes images from a seed disjoint from the training data, to read the
  number of shapes and every shape's kind and colour: features that see exactly what a shapes
  autoencoder must keep;
- Inception-v3 (the usual rFID) when given a local weights file.

The value depends on the network and on the number of images, so :func:`evaluate_autoencoder` also
reports ``rfid_floor``: the same distance between the held-out images and as many other real images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..models.autoencoder import Autoencoder

#: Shapes images the shapes feature network is trained on (20% of them held out for its accuracy).
SHAPES_FEATURE_IMAGES = 6000


def stack_images(items: list[Mapping[str, Any]]) -> Tensor:
    """``(N, C, H, W)`` float32 from dataset items with an ``image``."""
    return torch.stack([it["image"] for it in items]).float()


def labelled_shapes(options: Mapping[str, Any], n: int) -> tuple[Tensor, Tensor, list[int]]:
    """``n`` shapes images (the data ``options``, another seed) with label heads: the count (when it
    varies), then the kind and the colour of every shape slot (-1 for an empty slot); and the class counts."""
    from ..data import ShapesDataset

    opts = {**options, "seed": int(options.get("seed", 0)) + 1_000_003, "length": n, "return_masks": False}
    ds = ShapesDataset(**opts)
    items = [ds[i] for i in range(n)]
    m = ds.config.max_shapes
    heads = [(torch.stack([it["count"] for it in items])[:, None] - 1, [m], m > ds.config.min_shapes),
             (torch.stack([it["kinds"] for it in items]), [len(ds.kinds)] * m, len(ds.kinds) > 1),
             (torch.stack([it["colours"] for it in items]), [len(ds.colours)] * m, len(ds.colours) > 1)]
    kept = [h for h in heads if h[2]]
    if not kept:
        raise ValueError("shapes with one kind, one colour and a fixed count leave a feature network nothing to "
                         "learn; give a local Inception weights file or turn rFID off")
    return stack_images(items), torch.cat([h[0] for h in kept], 1), [k for h in kept for k in h[1]]


def shapes_feature_network(options: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None = None, *,
                           progress: bool = False) -> nn.Module:
    """The shapes count/kind/colour classifier for images made with these dataset ``options`` (cached; trained
    the first time, with a progress bar when ``progress``)."""
    from ..eval import ClassifierConfig, cached_classifier

    x, y, classes = labelled_shapes(options, SHAPES_FEATURE_IMAGES)
    size = x.shape[-1]
    return cached_classifier(f"shapes{size}-attributes", x, y, classes,
                             ClassifierConfig(image_size=32 if size >= 32 else 16), cache_dir=cache_dir,
                             verbose=progress)


def rfid_feature_network(dataset: str, options: Mapping[str, Any], *, inception: str | None = None,
                         cache_dir: str | os.PathLike[str] | None = None,
                         progress: bool = False) -> tuple[nn.Module | None, str]:
    """``(network, description)`` for rFID on a dataset (module docstring); ``(None, why)`` when there is none.
    ``progress``: say which network is loaded or trained (a bar while a shapes network trains)."""
    from ..eval import FEATURE_NETWORKS, load_fid_inception

    if inception:
        return load_fid_inception(inception), f"inception-v3 ({inception})"
    if progress and (dataset in FEATURE_NETWORKS or dataset == "shapes"):
        status(f"held-out evaluation: the {dataset} feature network for rFID (trained once, then cached)")
    if dataset in FEATURE_NETWORKS:
        net = FEATURE_NETWORKS[dataset](cache_dir=cache_dir)
        return net, f"{dataset} classifier (test accuracy {net.info.get('test_accuracy', math.nan):.4f})"
    if dataset == "shapes":
        net = shapes_feature_network(options, cache_dir, progress=progress)
        return net, (f"shapes count/kind/colour classifier at {net.config.image_size}px (mean test accuracy over "
                     f"{len(net.num_classes)} heads {net.info.get('test_accuracy', math.nan):.4f})")
    return None, f"none: no built-in feature network for dataset {dataset!r}; give a local Inception weights file"


def status(line: str) -> None:
    """A line saying what a long stage is doing, on stdout beside any progress bar."""
    tqdm.write(line)


@torch.no_grad()
def reconstruct(ae: Autoencoder, images: Tensor, batch_size: int = 128) -> Tensor:
    """Reconstructions ``decode(mode(q(z|x)))`` of ``(N, C, H, W)`` images, clamped to [-1, 1], on CPU."""
    was, device = ae.training, next(ae.parameters()).device
    ae.eval()
    out = [ae.decode(ae.encode(x.to(device)).mode()).clamp(-1, 1).cpu() for x in images.split(batch_size)]
    ae.train(was)
    return torch.cat(out)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR ``(N,)`` in dB of images in [-1, 1] (peak-to-peak range 2): ``10 log10(4 / MSE)``."""
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def evaluate_autoencoder(ae: Autoencoder, images: Tensor, *, feature_net: nn.Module | None = None,
                         feature_desc: str = "", reference: Tensor | None = None, mean_image: Tensor | None = None,
                         batch_size: int = 128, progress: bool = False) -> dict[str, Any]:
    """Held-out reconstruction quality: mean PSNR (and ``psnr_mean_image``, of the trivial reconstruction
    by ``mean_image``); with a feature network rFID and rKID, and ``rfid_floor`` (``reference`` vs ``images``).
    ``progress``: a line before each stage (reconstruction, rFID, its floor)."""
    n = images.shape[0]
    if progress:
        status(f"held-out evaluation: reconstructing {n} images")
    rec = reconstruct(ae, images, batch_size)
    p = psnr(rec, images)
    out: dict[str, Any] = {"n_held_out": images.shape[0], "psnr": float(p.mean()), "psnr_std": float(p.std()),
                           "mse": float((rec.double() - images.double()).square().mean())}
    if mean_image is not None:
        out["psnr_mean_image"] = float(psnr(mean_image.expand_as(images), images).mean())
    if feature_net is not None:
        from ..eval import evaluate

        kw: dict[str, Any] = {"features": feature_net, "kid_subset_size": min(1000, images.shape[0]),
                              "batch_size": batch_size}
        if progress:
            status(f"held-out evaluation: rFID and rKID of {n} reconstructions"
                   + (f" and the real-vs-real floor on {reference.shape[0]} other images" if reference is not None else ""))
        r = evaluate(rec, images, **kw)
        out.update(rfid=r["fid"], rkid=r["kid"], feature_network=feature_desc or r["feature_network"])
        if reference is not None:
            out["rfid_floor"] = evaluate(reference, images, **kw)["fid"]
    return out
