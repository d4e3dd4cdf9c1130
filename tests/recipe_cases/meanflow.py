"""The meanflow recipe: the diffusion case's tiny class-conditional U-Net with a second time input, on the rectified
flow; half the samples take the JVP (r < t), and its network dropout draws per-sample masks inside it."""

from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import MeanFlowRecipe

from . import RecipeCase
from .diffusion import CONFIG

MEANFLOW = ["process.name=flow", "process.prediction=flow", "model.second_time=true", "train.recipe=meanflow",
            "loss.noise_levels=logit_normal", "loss.weighting=simple", "fewstep.interval_ratio=0.5"]


def make(workdir, *overrides: str):
    return MeanFlowRecipe(config_from_dict(apply_overrides(CONFIG, [*MEANFLOW, *overrides])))


CASE = RecipeCase("meanflow", make, steps=6)
