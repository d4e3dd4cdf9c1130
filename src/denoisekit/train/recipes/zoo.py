"""The baselines' recipes: a VAE on the negative ELBO and a DCGAN with alternating updates, over a
:class:`~denoisekit.train.zoo.ZooConfig`.

- VAE (Kingma & Welling 2014): one Adam step on the mean negative one-sample ELBO per example (nats,
  :func:`denoisekit.models.vae.elbo`), each example's ``z`` drawn from its own generator.
- DCGAN (Radford et al. 2016, Sec. 4): Adam with ``betas=(0.5, 0.999)`` for both networks; each step first
  updates the discriminator on a real and a generated batch (optimiser phase 0), then the generator with the
  non-saturating loss on the same generated batch against the updated discriminator (phase 1; Goodfellow et
  al. 2014, Algorithm 1 with k = 1). With several processes its BatchNorm layers normalise over the global
  micro-batch (:class:`GlobalBatchNorm2d`), so N processes train the network one process does.

Both save the model's state dict as ``model.safetensors`` (the DCGAN's: ``generator.*`` and
``discriminator.*``), the optimisers as one (generator first), no EMA, and the ZooConfig and model config
in ``state.json`` for :func:`~denoisekit.train.zoo.load_zoo`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..._utils import randn
from ...engine.loop import Engine
from ...engine.recipe import OptimizerSpec, Recipe
from ...models.gan import DCGAN, discriminator_loss, generator_loss
from ...models.vae import bits_per_dim
from ...options import plain, read_config_file
from ..config import OptimConfig, TrainConfig
from ..zoo import ZooConfig, build_model, load_images



@dataclass(frozen=True)
class DataSection:
    """The engine's ``data`` section for data built in memory: a name (for messages) and loader workers."""

    name: str
    num_workers: int = 0


@dataclass(frozen=True)
class EngineSections:
    """A flat run config (``run``: a :class:`ZooConfig`, a ``Toy2DConfig``) as the sections the engine reads."""

    run: Any
    train: TrainConfig
    optim: OptimConfig
    data: DataSection

    def to_dict(self, **data: Any) -> dict[str, Any]:
        """``train``, ``optim`` and ``data`` (plus ``data`` entries) as plain nested dicts, for ``config.yaml``
        and the engine's resume check (``train.recipe`` left out: these are not diffusion runs)."""
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k != "recipe"}
        return plain({"train": train, "optim": dataclasses.asdict(self.optim),
                      "data": {**dataclasses.asdict(self.data), **data}})


class ImageItems(torch.utils.data.Dataset):
    """Images ``(N, C, S, S)`` as dataset items ``{"image": (C, S, S)}``."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i]}


def zoo_sections(config: ZooConfig) -> EngineSections:
    """The engine's view of a :class:`ZooConfig` (Adam = AdamW without weight decay; no clipping, no warm-up)."""
    betas = (0.5, 0.999) if config.model == "dcgan" else (0.9, 0.999)
    train = TrainConfig(steps=config.steps, batch_size=config.batch, grad_accum=config.grad_accum, seed=config.seed,
                        log_every=config.log_every, save_every=config.save_every, keep_last=config.keep_last,
                        max_nan_steps=config.max_nan_steps, device=config.device)
    return EngineSections(config, train, OptimConfig(lr=config.learning_rate, betas=betas, grad_clip=0.0),
                          DataSection(config.data))


class ZooRecipe(Recipe):
    """What the VAE and DCGAN recipes share: config, data and what a checkpoint holds."""

    name = "zoo"

    def __init__(self, config: ZooConfig, images: Tensor):
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected square images (N, C, S, S), got shape {tuple(images.shape)}")
        super().__init__(zoo_sections(config))
        self.zoo, self.images = config, images
        self.model: nn.Module | None = None

    def config_to_dict(self) -> dict[str, Any]:
        z = self.zoo
        return {"model": plain({"name": z.model, "options": z.model_options}),
                **self.config.to_dict(options=z.data_options)}

    def config_from_file(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return read_config_file(path, (), lambda raw, _: dict(raw))

    def build_dataset(self) -> Any:
        return ImageItems(self.images)

    def new_model(self) -> nn.Module:
        """The network (seeded from ``seed``), in training mode."""
        self.model = build_model(self.zoo, self.images.shape[1], self.images.shape[-1]).train()
        return self.model

    def state(self) -> dict[str, Any]:
        assert self.model is not None
        return {"zoo_config": dataclasses.asdict(self.zoo), "model_config": dataclasses.asdict(self.model.config)}


class VAERecipe(ZooRecipe):
    """The VAE on the negative ELBO (see the module docstring); logs the bound in bits/dim and the KL."""

    name = "vae"
    stats = ("loss", "nelbo_bpd", "kl")

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        return {"vae": self.new_model()}

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x = batch["image"].to(engine.device, torch.float32)
        terms = self.module("vae")(x, gens)  # the wrapped module's forward: elbo(vae, x, gens)
        nelbo = -terms.elbo
        return {"loss": nelbo.mean(), "nelbo_bpd": bits_per_dim(nelbo.detach(), x).mean(),
                "kl": terms.kl.detach().mean()}


class DCGANRecipe(ZooRecipe):
    """The DCGAN's alternating updates (see the module docstring); ``loss`` logs ``d_loss + g_loss``."""

    name = "dcgan"
    stats = ("loss", "d_loss", "g_loss")

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        model = self.new_model()
        assert isinstance(model, DCGAN)
        if engine.world > 1:
            convert_global_batchnorm(model)
        return {"generator": model.generator, "discriminator": model.discriminator}

    def optimizers(self) -> list[OptimizerSpec]:
        o = self.config.optim
        return [OptimizerSpec(list(self.modules["generator"].parameters()), o, phase=1),
                OptimizerSpec(list(self.modules["discriminator"].parameters()), o, phase=0)]

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x = batch["image"].to(engine.device, torch.float32)
        gen, disc = self.modules["generator"], self.module("discriminator")
        z = randn((len(x), gen.config.latent_dim), gens, device=x.device)
        if engine.phase == 0:  # the discriminator on real and generated images
            with torch.no_grad(), kept_buffers(gen):  # the generator's statistics count once, in phase 1
                fake = gen(z)
            d_loss = discriminator_loss(disc(x), disc(fake)).mean()
            return {"loss": d_loss, "d_loss": d_loss.detach()}
        # the same generated batch (same z, generator unchanged) against the updated discriminator
        g_loss = generator_loss(disc(self.module("generator")(z))).mean()
        return {"loss": g_loss, "g_loss": g_loss.detach()}


@contextmanager
def kept_buffers(module: nn.Module) -> Iterator[None]:
    """Undo what a forward pass does to ``module``'s buffers (BatchNorm running statistics)."""
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


class _AllReduceSum(torch.autograd.Function):
    """``sum over processes`` with its gradient (the sum of the upstream gradients over processes)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global micro-batch of all processes (Ioffe & Szegedy 2015, Algorithm 1, on the union
    of the processes' batches; torch's ``SyncBatchNorm`` on any backend, gloo included). One process, or eval
    mode: plain BatchNorm."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, device=x.device, dtype=x.dtype)
        total = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), count]))
        n = total[c]
        mean = total[:c] / n
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.square().sum((0, 2, 3))) / n  # biased, as BatchNorm normalises
        if self.track_running_stats and self.momentum is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)  # unbiased
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Make every ``BatchNorm2d`` of ``module`` a :class:`GlobalBatchNorm2d` in place (same parameters,
    buffers and state-dict keys)."""
    for parent in list(module.modules()):
        for name, bn in list(parent.named_children()):
            if type(bn) is nn.BatchNorm2d:
                new = GlobalBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
                new.load_state_dict(bn.state_dict())
                setattr(parent, name, new)
    return module


ZOO_RECIPES: Mapping[str, type[ZooRecipe]] = {"vae": VAERecipe, "dcgan": DCGANRecipe}


@dataclass
class ZooRun:
    """A trained model (in eval mode), its config, the logged means (``step`` and the recipe's stats every
    ``log_every`` steps), the run directory (None when it was temporary) and the seconds it took."""

    model: nn.Module
    config: ZooConfig
    history: list[dict[str, float]]
    out: Path | None
    seconds: float


def train_zoo(config: ZooConfig, images: Tensor | None = None, *, resume: bool = True) -> ZooRun:
    """Train per ``config`` on ``images`` ``(N, C, S, S)`` in [-1, 1] (default: the config's dataset).

    With ``out`` set, checkpoints every ``save_every`` steps and at the end; ``resume`` continues from the
    latest checkpoint there (bit-for-bit the same as an uninterrupted run; a config that differs in more
    than the schedule is an error).
    """
    x_all = load_images(config.data, config.data_options) if images is None else images
    recipe = ZOO_RECIPES[config.model](config, x_all)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="denoisekit-zoo-") as tmp:
        out = Path(config.out) if config.out else Path(tmp)
        Engine(recipe, out, resume=resume, progress=False).fit()
        with open(out / "log.csv", newline="") as f:
            history = [{"step": int(r["step"]), **{k: float(r[k]) for k in recipe.stats}} for r in csv.DictReader(f)]
    assert recipe.model is not None
    return ZooRun(recipe.model.eval(), config, history, Path(config.out) if config.out else None,
                  time.perf_counter() - t0)
