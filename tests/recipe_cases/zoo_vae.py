"""The VAE baseline: a tiny VAE on 8x8 ramps, two micro-batches per step (each example's z from its own
generator)."""

import torch

from denoisekit.train.recipes.zoo import VAERecipe
from denoisekit.train.zoo import ZooConfig

from . import RecipeCase

IMAGES = torch.linspace(-1, 1, 32 * 64).reshape(32, 1, 8, 8)  # any images will do
CONFIG = ZooConfig(model="vae", model_options={"width": 8, "latent_dim": 4}, steps=4, batch=8, grad_accum=2,
                   log_every=2, save_every=2)

CASE = RecipeCase("zoo_vae", lambda workdir: VAERecipe(CONFIG, IMAGES), steps=4)
