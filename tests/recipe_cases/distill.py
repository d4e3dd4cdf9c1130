"""The distill recipe: a smaller student U-Net regressing onto a frozen teacher (a diffusion case run, trained
once into the work directory)."""

from pathlib import Path

from denoisekit.engine import Engine
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import DiffusionRecipe, DistillRecipe

from . import RecipeCase
from .diffusion import CONFIG


def make(workdir: Path):
    teacher = Path(workdir) / "teacher"
    if not (teacher / "checkpoints").is_dir():
        Engine(DiffusionRecipe(config_from_dict(apply_overrides(CONFIG, ["train.steps=2"]))), teacher,
               progress=False).fit()
    student = apply_overrides(CONFIG, [f"teacher.run={teacher}", "train.recipe=distill", "model.channels=4",
                                       "model.norm_groups=2", "model.head_channels=4"])
    return DistillRecipe(config_from_dict(student))


CASE = RecipeCase("distill", make, steps=6)
