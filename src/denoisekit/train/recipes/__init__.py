"""Recipes over the diffusion run config (:class:`~denoisekit.train.config.Config`), picked by ``train.recipe``.

Other runs have their own configs and commands: the autoencoder (:mod:`denoisekit.train.autoencoder`), the
noise-conditional classifier (:mod:`denoisekit.train.classifier`), the baselines and the 2-D toys."""

from .diffusion import DiffusionRecipe
from .distill import DistillRecipe
from .lora import LoraRecipe
from .progressive import ProgressiveRecipe

RECIPES: dict[str, type] = {"diffusion": DiffusionRecipe, "distill": DistillRecipe, "progressive": ProgressiveRecipe,
                            "lora": LoraRecipe}

__all__ = ["RECIPES", "DiffusionRecipe", "DistillRecipe", "LoraRecipe", "ProgressiveRecipe"]
