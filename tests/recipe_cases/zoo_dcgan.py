"""The DCGAN baseline: alternating discriminator and generator phases over two micro-batches per step; with 2
processes its BatchNorm normalises over the global micro-batch."""

from denoisekit.train.recipes.zoo import DCGANRecipe
from denoisekit.train.zoo import ZooConfig

from . import RecipeCase
from .zoo_vae import IMAGES

CONFIG = ZooConfig(model="dcgan", model_options={"width": 8, "latent_dim": 8}, steps=4, batch=16, grad_accum=2,
                   log_every=2, save_every=2)

CASE = RecipeCase("zoo_dcgan", lambda workdir: DCGANRecipe(CONFIG, IMAGES), steps=4)
