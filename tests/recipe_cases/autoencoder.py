"""The autoencoder recipe: a tiny f=2 KL autoencoder on 8x8 digits with a one-layer PatchGAN, the GAN on
from step 1 (the second step), so the first step trains the autoencoder alone and every later one runs both
backward phases and the adaptive weight; warm-up + cosine LR, a separate discriminator LR, and clipping of
the autoencoder's gradient (its norm is ~100 here)."""

from denoisekit.train.autoencoder_config import AutoencoderTrainConfig
from denoisekit.train.recipes.autoencoder import AutoencoderRecipe

from . import RecipeCase

CONFIG = {
    "data": {"name": "digits", "size": 8, "split": "train"},
    "model": {"in_channels": 1, "channels": 8, "factor": 2, "latent_channels": 2, "mid_attention": False,
              "norm_groups": 4},
    "discriminator": {"channels": 8, "layers": 1},
    "loss": {"disc_start": 1},
    "optim": {"lr": 3e-3, "disc_lr": 1e-3, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1,
              "grad_clip": 50.0},
    "train": {"steps": 6, "batch_size": 8, "log_every": 2, "save_every": 3, "keep_last": 2, "device": "cpu"},
    "eval": {"held_out": 0, "scale_images": 16, "features": "none"},
}


def make(workdir, *overrides):
    return AutoencoderRecipe(AutoencoderTrainConfig.from_dict(CONFIG, overrides))


CASE = RecipeCase("autoencoder", make, steps=6)
