"""Recipes over the diffusion run config (:class:`~denoisekit.train.config.Config`), picked by ``train.recipe``.

Other runs have their own configs and commands: the autoencoder (:mod:`denoisekit.train.autoencoder`), the
noise-conditional classifier (:mod:`denoisekit.train.classifier`), the baselines and the 2-D toys."""

from .consistency import ConsistencyDistillRecipe, ConsistencyTrainRecipe
from .controlnet import ControlNetRecipe
from .diffusion import DiffusionRecipe
from .distill import DistillRecipe
from .dreambooth import DreamBoothRecipe
from .lcm_lora import LcmLoraRecipe
from .lora import LoraRecipe
from .meanflow import MeanFlowRecipe
from .progressive import ProgressiveRecipe
from .reflow import ReflowRecipe
from .textual_inversion import TextualInversionRecipe

RECIPES: dict[str, type] = {"diffusion": DiffusionRecipe, "distill": DistillRecipe, "progressive": ProgressiveRecipe,
                            "consistency_distill": ConsistencyDistillRecipe, "consistency_train": ConsistencyTrainRecipe,
                            "reflow": ReflowRecipe, "lora": LoraRecipe, "lcm_lora": LcmLoraRecipe,
                            "meanflow": MeanFlowRecipe, "controlnet": ControlNetRecipe,
                            "textual_inversion": TextualInversionRecipe, "dreambooth": DreamBoothRecipe}

__all__ = ["RECIPES", "ConsistencyDistillRecipe", "ConsistencyTrainRecipe", "ControlNetRecipe", "DiffusionRecipe",
           "DistillRecipe", "DreamBoothRecipe", "LcmLoraRecipe", "LoraRecipe", "MeanFlowRecipe", "ProgressiveRecipe",
           "ReflowRecipe", "TextualInversionRecipe"]
