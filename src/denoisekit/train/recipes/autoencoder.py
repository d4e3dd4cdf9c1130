"""The autoencoder recipe: reconstruction + KL + adaptive-weighted PatchGAN loss, a run of
:class:`~denoisekit.train.autoencoder_config.AutoencoderTrainConfig`.

The objective of Rombach et al. 2022 (App. G) with the GAN term of Esser et al. 2021 (Sec. 3.1), per image::

    L_AE = ||x - Dec(z)||_p  +  kl_weight * KL(q(z|x) || N(0, I))  +  lambda * disc_weight * L_G   (p = 1 or 2)
    L_D  = hinge loss of the PatchGAN on x (real) and Dec(z) (fake)

``||.||_p`` and the KL are *sums* over pixels / latent elements (LDM's convention, so their ``kl_weight = 1e-6``
means the same here), averaged over the batch. ``lambda`` is the adaptive weight (eq. 7) of the global batch's
gradients; ``L_G`` and ``L_D`` are off before ``loss.disc_start`` steps. No perceptual (LPIPS) term: it needs
pretrained VGG weights, which this library does not download. z is a reparameterised posterior sample drawn
with the engine's per-sample generators.

Two modules train: ``autoencoder`` and ``discriminator``, with one AdamW over two parameter groups (``optim.lr``
and ``optim.disc_lr``) and ``optim.grad_clip`` on the autoencoder only; no EMA. A step backpropagates twice:
the generator loss (whose gradients reaching the discriminator are then discarded), and the discriminator's
hinge loss on the real images and the detached reconstructions. :meth:`AutoencoderRecipe.finish` fits the
latent scale, exports the autoencoder (:mod:`denoisekit.train.autoencoder_io`) and writes ``metrics.json`` and
``reconstructions.png`` (held-out PSNR and rFID, :mod:`denoisekit.train.autoencoder_eval`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...engine.recipe import OptimizerSpec, Recipe
from ...eval.plotting import save_grid
from ...io import write_text_atomic
from ...models.autoencoder import Autoencoder, compute_latent_scale
from ...models.discriminator import PatchDiscriminator, disc_factor, hinge_d_loss, hinge_g_loss
from ..autoencoder_config import AutoencoderTrainConfig, load_autoencoder_config, split_datasets
from ..autoencoder_eval import evaluate_autoencoder, reconstruct, rfid_feature_network, stack_images
from ..autoencoder_io import METRICS, save_autoencoder

if TYPE_CHECKING:
    from ...engine.loop import Engine


class FirstItems(Dataset):
    """Items ``0..n-1`` of ``dataset`` (the training part when the rest is held out); ``set_epoch`` is passed
    on, so per-epoch augmentations follow the data stream."""

    def __init__(self, dataset: Any, n: int):
        self.dataset, self.n = dataset, n
        self.set_epoch = getattr(dataset, "set_epoch", None)  # the engine's data stream calls it when callable

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.dataset[index]


def _seeded(build: Any, seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class AutoencoderRecipe(Recipe):
    """A KL autoencoder with a PatchGAN discriminator (see the module docstring)."""

    name = "autoencoder"
    resumable = Recipe.resumable + ("eval.",)
    stats = ("loss", "rec", "kl", "g_loss", "d_loss", "gan_weight")

    def __init__(self, config: AutoencoderTrainConfig):
        super().__init__(config)
        self.dataset: Any = None
        self.held_out: Any = None
        self.image_shape: tuple[int, ...] = ()

    # ---------------------------------------------------------------------------- config and data
    def config_to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return load_autoencoder_config(path).to_dict()

    def build_dataset(self) -> Any:
        c = self.config
        train, n_train, self.held_out = split_datasets(c.data, c.eval.held_out)
        self.dataset = train if n_train == len(train) else FirstItems(train, n_train)
        return self.dataset

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Any:
        return {"image": stack_images(list(items))}

    def check_data(self, dataset: Any) -> None:
        c = self.config.model
        if len(dataset) < 1:
            raise ValueError(f"dataset {self.config.data.name!r} has no training images")
        shape = tuple(dataset[0]["image"].shape)
        if len(shape) != 3 or shape[0] != c.in_channels or shape[1] % c.factor or shape[2] % c.factor:
            raise ValueError(f"the autoencoder (model.in_channels={c.in_channels}, model.factor={c.factor}) cannot "
                             f"encode the dataset's images of shape {shape}: channels must match and H, W be "
                             f"divisible by the factor")
        self.image_shape = shape

    # ---------------------------------------------------------------------------- modules
    def build(self, engine: Engine) -> dict[str, nn.Module]:
        c, seed = self.config, self.config.train.seed
        return {"autoencoder": _seeded(lambda: Autoencoder(c.model), seed),
                "discriminator": _seeded(lambda: PatchDiscriminator(c.discriminator), seed + 1)}

    def optimizers(self) -> list[OptimizerSpec]:
        o, ae, disc = self.config.optim, self.modules["autoencoder"], self.modules["discriminator"]
        groups = [{"params": list(ae.parameters()), "lr": o.lr},
                  {"params": list(disc.parameters()), "lr": o.disc_lr or o.lr}]
        return [OptimizerSpec(groups, o, clip=list(ae.parameters()))]

    # ---------------------------------------------------------------------------- one step
    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        """Generator phase (reconstruction, KL, adaptive-weighted ``L_G``), then discriminator phase (``L_D``);
        both backpropagated here. The config allows no gradient accumulation: discarding the discriminator's
        generator-phase gradients would also discard earlier micro-batches'."""
        lc = self.config.loss
        ae, disc = self.module("autoencoder"), self.module("discriminator")
        x = batch["image"].to(engine.device, torch.float32)
        recon, posterior = ae(x, True, gens)
        err = (recon - x).abs() if lc.reconstruction == "l1" else (recon - x).square()
        rec = err.flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = rec + lc.kl_weight * kl
        zero = torch.zeros((), device=engine.device)
        g_loss, d_loss, weight = zero, zero, zero
        gan = lc.disc_weight > 0 and disc_factor(engine.step, lc.disc_start) > 0
        if gan:
            g_loss = hinge_g_loss(disc(recon))
            last = self.modules["autoencoder"].last_layer
            weight = lc.disc_weight * global_adaptive_weight(rec, g_loss, last, engine,
                                                             max_weight=lc.max_adaptive_weight)
            loss = loss + weight * g_loss
        engine.backward(loss)
        if gan:  # the generator loss also reached the discriminator: those gradients are not its own
            for p in self.modules["discriminator"].parameters():
                p.grad = None
            d_loss = hinge_d_loss(*disc(torch.cat([x, recon.detach()])).chunk(2))
            engine.backward(d_loss)
        return {"loss": loss.detach(), "rec": rec.detach(), "kl": kl.detach(), "g_loss": g_loss.detach(),
                "d_loss": d_loss.detach(), "gan_weight": weight}

    # ---------------------------------------------------------------------------- saving
    def state(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape)}

    # ---------------------------------------------------------------------------- outputs
    def finish(self, engine: Engine) -> dict[str, Any]:
        """Set the latent scale from training images, export the autoencoder, write ``metrics.json`` and
        ``reconstructions.png``; return the metrics."""
        c, device, out = self.config, engine.device, engine.out
        ae = self.modules["autoencoder"]
        train_x = stack_images([self.dataset[i] for i in range(min(c.eval.scale_images, len(self.dataset)))])
        scale, shift = compute_latent_scale(ae, train_x.to(device), center=c.eval.center_latents,
                                            generator=torch.Generator().manual_seed(c.train.seed),
                                            batch_size=c.eval.batch_size)
        ae.set_latent_scale(scale, shift)
        save_autoencoder(ae, out, step=engine.step, image_shape=list(self.image_shape))
        h, w = self.image_shape[1:]
        metrics: dict[str, Any] = {"step": engine.step, "train_time_s": round(engine.elapsed, 1),
                                   "parameters": sum(p.numel() for p in ae.parameters()),
                                   "latent_shape": list(c.model.latent_shape(h, w)), "scale_factor": scale,
                                   "shift": shift}
        if self.held_out is not None and len(self.held_out) > 0:
            held = stack_images([self.held_out[i] for i in range(len(self.held_out))])
            e = c.eval
            net, desc = (None, "none (eval.features: none)") if e.features == "none" else \
                rfid_feature_network(c.data.name, c.data.options, inception=e.inception, cache_dir=e.cache_dir)
            net = net.to(device) if net is not None else None
            ref = train_x[:len(held)] if len(train_x) >= len(held) else None
            metrics.update(evaluate_autoencoder(ae, held, feature_net=net, feature_desc=desc, reference=ref,
                                                mean_image=train_x.mean(0, keepdim=True),
                                                batch_size=c.eval.batch_size,
                                                progress=engine.progress and engine.main))
            metrics.setdefault("feature_network", desc)
            shown = held[:8]
            save_grid([shown, reconstruct(ae, shown)], out / "reconstructions.png", labels=["held-out", "reconstructed"],
                      aligned=True, columns=len(shown))
        write_text_atomic(out / METRICS, json.dumps(metrics, indent=1) + "\n")
        return metrics


def global_adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, engine: Engine, *,
                           delta: float = 1e-4, max_weight: float = 1e4) -> Tensor:
    """Esser et al. 2021 eq. 7, ``||grad rec_loss|| / (||grad g_loss|| + delta)`` at ``last_layer``, clamped to
    ``[0, max_weight]`` and detached, of the *global* batch: each process's gradients are averaged before the
    norms (the gradient of the mean loss), so N processes weigh as 1 does
    (:func:`~denoisekit.models.discriminator.adaptive_weight` is the one-process form). Keeps both graphs."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    rec_grad, g_grad = engine.acc.reduce(torch.stack([rec_grad, g_grad]), "mean")
    return (rec_grad.norm() / (g_grad.norm() + delta)).clamp(0.0, max_weight).detach()
