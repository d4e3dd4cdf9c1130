"""The consistency_train recipe (iCT): no teacher; the curriculum doubles the levels every step of this 6-step run
(K' = 1), so a resumed run must pick up N(k) from the step alone."""

from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import ConsistencyTrainRecipe

from . import RecipeCase
from .diffusion import CONFIG


def make(workdir, *overrides: str):
    student = apply_overrides(CONFIG, ["process.name=edm", "process.prediction=consistency",
                                       "train.recipe=consistency_train", "fewstep.s0=2", "fewstep.s1=16", *overrides])
    return ConsistencyTrainRecipe(config_from_dict(student))


CASE = RecipeCase("consistency_train", make, steps=6)
