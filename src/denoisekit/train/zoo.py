"""Training loops for the non-diffusion baselines: a VAE (ELBO) and a DCGAN (alternating Adam).

Both are small and deterministic: the network is initialised from ``seed``, and step ``k`` draws its
batch indices and noise from a generator seeded by ``(seed, k)`` (:func:`~denoisekit.train.data_stream.
stream_seeds`), so a run resumed from a checkpoint continues exactly as if it had not stopped.

- VAE (Kingma & Welling 2014): Adam on the negative one-sample ELBO per example (in nats), as
  :func:`denoisekit.models.vae.elbo` computes it.
- DCGAN (Radford et al. 2016, Sec. 4): Adam with ``betas=(0.5, 0.999)`` and lr 2e-4 for both networks;
  each step first updates the discriminator on a real and a generated batch, then the generator with
  the non-saturating loss on the same generated batch (Goodfellow et al. 2014, Algorithm 1 with k = 1).

Checkpoints (``out`` set) are :mod:`denoisekit.train.checkpoint` directories: the model's state dict
(the DCGAN's holds both networks), the optimiser state (the DCGAN's two optimisers as one, groups in
order generator, discriminator), and the config and loss history in ``state.json``. There is no EMA:
the checkpoint's ``ema.safetensors`` is empty. :func:`load_zoo` rebuilds the model from one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._utils import check_choice, seeded_generators
from ..models.gan import DCGAN, DCGANConfig, discriminator_loss, generator_loss
from ..models.vae import VAE, VAEConfig, bits_per_dim, elbo
from .checkpoint import latest_checkpoint, load_checkpoint, load_weights, save_checkpoint
from .data_stream import stream_seeds

ZOO_MODELS: dict[str, type[nn.Module]] = {"vae": VAE, "dcgan": DCGAN}
#: Learning rates when ``lr`` is None: Adam's usual 1e-3 for the VAE, Radford et al.'s 2e-4 for the DCGAN.
DEFAULT_LR = {"vae": 1e-3, "dcgan": 2e-4}
_STEP_TAG = 0x7A6F6F  # "zoo": this module's stream of per-step seeds
#: Fields a resumed run may change (how long and how often); any other change is an error.
_SCHEDULE_FIELDS = ("steps", "log_every", "save_every")


@dataclass(frozen=True)
class ZooConfig:
    """A VAE or DCGAN run. ``model_options``: fields of :class:`VAEConfig` / :class:`DCGANConfig` other than
    ``image_size`` and ``channels``, which come from the data; ``data``/``data_options``: a dataset of
    ``denoisekit.data.IMAGE_DATASETS`` and its options; ``out``: checkpoint directory (None: none)."""

    model: Literal["vae", "dcgan"] = "vae"
    model_options: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch: int = 64
    lr: float | None = None
    seed: int = 0
    log_every: int = 50
    out: str | None = None
    save_every: int = 0  # 0: only at the end

    def __post_init__(self) -> None:
        check_choice("zoo model", self.model, ZOO_MODELS)
        for name in ("steps", "batch", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ZooConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise ValueError(f"ZooConfig.save_every must be an integer >= 0, got {self.save_every!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"ZooConfig.lr must be None or > 0, got {self.lr!r}")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.model] if self.lr is None else self.lr


def load_images(name: str, options: dict[str, Any] | None = None) -> Tensor:
    """Every image of a built-in dataset as one tensor ``(N, C, S, S)`` in [-1, 1]."""
    from ..data import IMAGE_DATASETS

    check_choice("dataset", name, IMAGE_DATASETS)
    ds = IMAGE_DATASETS[name](**(options or {}))
    images = getattr(ds, "images", None)
    return images if isinstance(images, Tensor) else torch.stack([ds[i]["image"] for i in range(len(ds))])


def build_model(config: ZooConfig, channels: int, image_size: int) -> nn.Module:
    """A freshly initialised VAE or DCGAN for images ``(C, S, S)``, seeded by ``config.seed``."""
    cfg_class = VAEConfig if config.model == "vae" else DCGANConfig
    try:
        model_config = cfg_class(**{**config.model_options, "channels": channels, "image_size": image_size})
    except TypeError as e:
        raise ValueError(f"bad model_options for {config.model!r}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ZOO_MODELS[config.model](model_config)


def _optimizers(model: nn.Module, config: ZooConfig) -> list[torch.optim.Optimizer]:
    if isinstance(model, DCGAN):
        return [torch.optim.Adam(m.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
                for m in (model.generator, model.discriminator)]
    return [torch.optim.Adam(model.parameters(), lr=config.learning_rate)]


def _joint_optimizer_state(optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    """Several optimisers' state dicts as one (parameter ids and groups concatenated in order)."""
    state: dict[int, Any] = {}
    groups: list[dict[str, Any]] = []
    offset = 0
    for opt in optimizers:
        sd = opt.state_dict()
        state.update({pid + offset: v for pid, v in sd["state"].items()})
        groups += [{**g, "params": [p + offset for p in g["params"]]} for g in sd["param_groups"]]
        offset += sum(len(g["params"]) for g in sd["param_groups"])
    return {"state": state, "param_groups": groups}


def _load_joint_optimizer_state(optimizers: list[torch.optim.Optimizer], joint: dict[str, Any]) -> None:
    """Inverse of :func:`_joint_optimizer_state`."""
    offset, first_group = 0, 0
    for opt in optimizers:
        n_groups = len(opt.param_groups)
        groups = joint["param_groups"][first_group:first_group + n_groups]
        n_params = sum(len(g["params"]) for g in groups)
        opt.load_state_dict({
            "state": {pid - offset: v for pid, v in joint["state"].items() if offset <= pid < offset + n_params},
            "param_groups": [{**g, "params": [p - offset for p in g["params"]]} for g in groups]})
        offset, first_group = offset + n_params, first_group + n_groups


def vae_step(model: VAE, opt: torch.optim.Optimizer, x: Tensor, g: torch.Generator) -> dict[str, float]:
    """One Adam step on the mean negative ELBO of the batch ``x``; returns bits/dim of the bound and the KL."""
    terms = elbo(model, x, g)
    loss = -terms.elbo.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"nelbo_bpd": float(bits_per_dim(-terms.elbo.detach(), x).mean()), "kl": float(terms.kl.detach().mean())}


def dcgan_step(model: DCGAN, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, x: Tensor,
               g: torch.Generator) -> dict[str, float]:
    """One discriminator then one generator update (Goodfellow et al. 2014, Algorithm 1, k = 1)."""
    fake = model.generator.sample(x.shape[0], g)
    d_loss = discriminator_loss(model.discriminator(x), model.discriminator(fake.detach())).mean()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    g_loss = generator_loss(model.discriminator(fake)).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()  # also fills the discriminator's grads; opt_d zeroes them before its next step
    opt_g.step()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}


@dataclass
class ZooRun:
    """A trained model (in eval mode), its config, the loss history and the checkpoint directory."""

    model: nn.Module
    config: ZooConfig
    history: list[dict[str, float]]
    out: Path | None
    seconds: float


def train_zoo(config: ZooConfig, images: Tensor | None = None, *, resume: bool = True) -> ZooRun:
    """Train per ``config`` on ``images`` ``(N, C, S, S)`` in [-1, 1] (default: the config's dataset).

    With ``out`` set, checkpoints every ``save_every`` steps and at the end; ``resume`` continues from the
    latest checkpoint there (bit-for-bit the same as an uninterrupted run).
    """
    x_all = load_images(config.data, config.data_options) if images is None else images
    if x_all.ndim != 4 or x_all.shape[-1] != x_all.shape[-2]:
        raise ValueError(f"expected square images (N, C, S, S), got shape {tuple(x_all.shape)}")
    model = build_model(config, x_all.shape[1], x_all.shape[-1]).train()
    opts = _optimizers(model, config)
    history: list[dict[str, float]] = []
    start = 0
    ckpt = latest_checkpoint(config.out) if config.out and resume else None
    if ckpt is not None:
        saved = load_checkpoint(ckpt)
        before = {k: v for k, v in saved["state"]["zoo_config"].items() if k not in _SCHEDULE_FIELDS}
        now = {k: v for k, v in dataclasses.asdict(config).items() if k not in _SCHEDULE_FIELDS}
        if before != now:
            raise ValueError(f"{ckpt} was trained with {before}, which differs from this config {now}; "
                             "use another out directory or resume=False")
        load_weights(model, saved["model"], str(ckpt))
        _load_joint_optimizer_state(opts, saved["optimizer"])
        start, history = saved["step"], saved["state"]["history"]

    def save(step: int) -> None:
        state = {"zoo_config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model.config),
                 "history": history}
        save_checkpoint(config.out, step, model=model.state_dict(), ema={}, optimizer=_joint_optimizer_state(opts),
                        state=state)

    t0, running = time.perf_counter(), {}
    for step in range(start, config.steps):
        g = torch.Generator().manual_seed(int(stream_seeds(config.seed, _STEP_TAG, step)[0]))
        x = x_all[torch.randint(0, x_all.shape[0], (config.batch,), generator=g)]
        stats = vae_step(model, opts[0], x, g) if isinstance(model, VAE) else dcgan_step(model, *opts, x, g)
        if not all(math.isfinite(v) for v in stats.values()):
            raise FloatingPointError(f"{config.model} training diverged at step {step}: {stats}")
        for k, v in stats.items():
            running[k] = running.get(k, 0.0) + v / config.log_every
        if (step + 1) % config.log_every == 0:
            history.append({"step": step + 1, **running})
            running = {}
        if config.out and (step + 1 == config.steps or config.save_every and (step + 1) % config.save_every == 0):
            save(step + 1)
    return ZooRun(model.eval(), config, history, Path(config.out) if config.out else None,
                  time.perf_counter() - t0)


def load_zoo(path: str | Path) -> nn.Module:
    """The model of a run directory (its latest checkpoint) or of one checkpoint directory, in eval mode."""
    path = Path(path)
    ckpt = latest_checkpoint(path) or path
    saved = load_checkpoint(ckpt, weights_only=True)
    cfg = ZooConfig(**saved["state"]["zoo_config"])
    model_cfg = saved["state"]["model_config"]
    model = build_model(cfg, model_cfg["channels"], model_cfg["image_size"])
    load_weights(model, saved["model"], str(ckpt))
    return model.eval()


@torch.no_grad()
def sample(model: nn.Module, n: int, *, seed: int = 0, batch_size: int = 256) -> Tensor:
    """``n`` images ``(n, C, S, S)`` in [-1, 1] from a VAE or DCGAN, in eval mode; sample ``i`` uses the
    generator seeded ``seed + i``, so it does not depend on ``batch_size``."""
    was_training = model.training
    model.eval()
    try:
        gens = seeded_generators(seed, n)
        out = [model.sample(len(gens[i:i + batch_size]), gens[i:i + batch_size]) for i in range(0, n, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).clamp(-1, 1)


def samples_per_second(model: nn.Module, n: int = 512, *, batch_size: int = 256, repeats: int = 3) -> float:
    """Sampling throughput of :func:`sample` (best of ``repeats`` timings after one warm-up batch)."""
    sample(model, min(n, batch_size), batch_size=batch_size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(model, n, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return n / best
