"""Training the latent-diffusion autoencoder: :class:`AutoencoderTrainer` is the engine
(:mod:`denoisekit.engine.loop`) running the :class:`~denoisekit.train.recipes.autoencoder.AutoencoderRecipe`
(reconstruction + KL + adaptive-weighted PatchGAN loss of Rombach et al. 2022, App. G; Esser et al. 2021, eq. 7).

``train_autoencoder(config, "runs/ae")`` writes::

    config.yaml                           the resolved config (sections: see :class:`AutoencoderTrainConfig`)
    checkpoints/step_*/                   model.safetensors (``autoencoder.*`` and ``discriminator.*``),
                                          optimizer.safetensors, state.json (data position, RNG states)
    log.csv, loss.png                     rec, kl, g_loss, d_loss, adaptive weight, lr, grad norm per logged step
    autoencoder.safetensors, .json        the final autoencoder with its latent scale: :func:`load_autoencoder`
    metrics.json, reconstructions.png     held-out PSNR and rFID (:func:`evaluate_autoencoder`)

The engine gives it what every run has: the seeded data stream and per-sample posterior noise (a function of
``(train.seed, step, sample index)``, so a resumed run continues bit for bit and N processes equal 1),
the NaN/inf policy, logs, checkpoints and ``accelerate launch``.

Held-out images (:func:`~denoisekit.train.autoencoder_config.split_datasets`): a dataset with a
``split`` option (digits) uses its ``test`` split; a procedural one with ``length`` and ``seed``
(shapes) the items after the training ones; any other gives up its last ``eval.held_out`` items. The
rFID feature networks (no download: the digits classifier, a shapes attribute classifier, or
Inception-v3 from ``eval.inception``) and ``rfid_floor`` (the same distance between the held-out
images and as many training images: what "as good as a fresh sample" scores) are described in
:mod:`denoisekit.train.autoencoder_eval`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..engine.checkpoint import latest_checkpoint
from ..engine.lineage import CHECKPOINTS, RUN_CONFIG
from ..engine.loop import Engine, dict_changes
from .autoencoder_config import AutoencoderTrainConfig, load_autoencoder_config
from .autoencoder_eval import evaluate_autoencoder
from .autoencoder_io import FORMAT, META, METRICS, WEIGHTS, load_autoencoder, save_autoencoder
from .recipes.autoencoder import AutoencoderRecipe

__all__ = ["FORMAT", "META", "METRICS", "WEIGHTS", "AutoencoderRecipe", "AutoencoderTrainConfig",
           "AutoencoderTrainer", "evaluate_autoencoder", "load_autoencoder", "load_autoencoder_config",
           "run_train_autoencoder", "save_autoencoder", "train_autoencoder"]


class AutoencoderTrainer(Engine):
    """The engine over an :class:`AutoencoderRecipe`: set up a run (fresh or resumed) in ``__init__``;
    :meth:`fit` trains it and, after the last step, scales, exports and evaluates (the recipe's ``finish``)."""

    def __init__(self, config: AutoencoderTrainConfig, out_dir: str | os.PathLike[str], *, resume: bool = False,
                 progress: bool = True):
        recipe = AutoencoderRecipe(config)
        if resume:
            _check_resume(recipe, Path(out_dir))
        super().__init__(recipe, out_dir, resume=resume, progress=progress)
        self.config = config

    @property
    def raw_ae(self) -> nn.Module:
        return self.recipe.modules["autoencoder"]

    @property
    def raw_disc(self) -> nn.Module:
        return self.recipe.modules["discriminator"]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.recipe.image_shape

    def finish(self) -> dict[str, Any]:
        """Set the latent scale, export the autoencoder, write ``metrics.json``; return the metrics."""
        return self.recipe.finish(self)


def _check_resume(recipe: AutoencoderRecipe, out: Path) -> None:
    """Refuse to resume a run whose config differs outside ``recipe.resumable``, naming the keys."""
    if latest_checkpoint(out / CHECKPOINTS) is None:
        return
    old = recipe.config_from_file(out / RUN_CONFIG)
    changed = [k for k in dict_changes(old, recipe.config_to_dict()) if not k.startswith(recipe.resumable)]
    if changed:
        raise ValueError(f"cannot resume {out}: the config differs in {', '.join(changed)} "
                         f"(only {', '.join(recipe.resumable)}* may change)")


def train_autoencoder(config: AutoencoderTrainConfig | str | os.PathLike[str], out: str | os.PathLike[str], *,
                      overrides: Sequence[str] = (), resume: bool = False, progress: bool = True) -> Path:
    """Train an autoencoder per a config (or YAML file, with dotted ``overrides``) into ``out``; return it."""
    if isinstance(config, AutoencoderTrainConfig):
        cfg = AutoencoderTrainConfig.from_dict(config.to_dict(), overrides) if overrides else config
    else:
        cfg = load_autoencoder_config(config, overrides)
    return AutoencoderTrainer(cfg, out, resume=resume, progress=progress).fit()


def run_train_autoencoder(config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                          overrides: Sequence[str] = (), resume: bool = False, progress: bool = True) -> int:
    """``denoisekit train-autoencoder CONFIG --out DIR [--set k=v] [--resume]``: train, print the metrics;
    ``progress``: bars and notes (``--quiet``: off)."""
    out = train_autoencoder(config_path, out_dir, overrides=overrides, resume=resume, progress=progress)
    if (out / METRICS).is_file():
        m = json.loads((out / METRICS).read_text())
        parts = [f"{k} {m[k]:.4g}" for k in ("psnr", "psnr_mean_image", "rfid", "rfid_floor", "scale_factor")
                 if isinstance(m.get(k), (int, float))]
        print(f"{out}: " + ", ".join(parts))
    return 0
