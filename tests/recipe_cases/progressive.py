"""The progressive recipe: a student started from a tiny diffusion teacher, matching its 2 DDIM steps in 1 at
``sample.nfe=2`` student steps."""

from pathlib import Path

from denoisekit.engine import Engine
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import DiffusionRecipe, ProgressiveRecipe

from . import RecipeCase
from .diffusion import CONFIG


def make(workdir: Path):
    teacher = Path(workdir) / "teacher"
    if not (teacher / "checkpoints").is_dir():
        Engine(DiffusionRecipe(config_from_dict(apply_overrides(CONFIG, ["train.steps=2"]))), teacher,
               progress=False).fit()
    student = apply_overrides(CONFIG, [f"teacher.run={teacher}", f"init.from_run={teacher}",
                                       "train.recipe=progressive", "sample.nfe=2", "sample.sampler=ddim",
                                       # the student starts from a 2-step teacher whose zero-initialised output convs have
                                       # ~0 gradients: with Adam's eps at 1e-8 their update is the sign of float-order noise
                                       "optim.eps=1e-3"])
    return ProgressiveRecipe(config_from_dict(student))


CASE = RecipeCase("progressive", make, steps=6)
