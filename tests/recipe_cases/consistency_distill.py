"""The consistency_distill recipe: a consistency student of a tiny EDM teacher (trained once into the work
directory), with an EMA target network (``fewstep.mu``) that must resume bit-exactly (``recipe.safetensors``)."""

from pathlib import Path

from denoisekit.engine import Engine
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import ConsistencyDistillRecipe, DiffusionRecipe

from . import RecipeCase
from .diffusion import CONFIG

EDM = ["process.name=edm", "process.prediction=edm"]
STUDENT = ["process.name=edm", "process.prediction=consistency"]


def teacher_run(workdir: Path) -> Path:
    teacher = Path(workdir) / "teacher_edm"
    if not (teacher / "checkpoints").is_dir():
        Engine(DiffusionRecipe(config_from_dict(apply_overrides(CONFIG, ["train.steps=2", *EDM]))), teacher,
               progress=False).fit()
    return teacher


def make(workdir: Path, *overrides: str):
    teacher = teacher_run(workdir)
    student = apply_overrides(CONFIG, [*STUDENT, f"teacher.run={teacher}", f"init.from_run={teacher}",
                                       "train.recipe=consistency_distill", "fewstep.levels=6", "fewstep.mu=0.9",
                                       "fewstep.solver=heun", "train.steps=4", *overrides])
    return ConsistencyDistillRecipe(config_from_dict(student))


CASE = RecipeCase("consistency_distill", make, steps=4)
