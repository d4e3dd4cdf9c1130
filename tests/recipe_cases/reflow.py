"""The reflow recipe: a 2-rectified flow trained on the ODE coupling of a tiny class-conditional rectified-flow
teacher (trained once into the work directory); the pairs are made per step from the per-sample generators."""

from pathlib import Path

from denoisekit.engine import Engine
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import DiffusionRecipe, ReflowRecipe

from . import RecipeCase
from .diffusion import CONFIG

FLOW = ["process.name=flow", "process.prediction=flow"]


def teacher_run(workdir: Path) -> Path:
    teacher = Path(workdir) / "teacher_flow"
    if not (teacher / "checkpoints").is_dir():
        Engine(DiffusionRecipe(config_from_dict(apply_overrides(CONFIG, ["train.steps=2", *FLOW]))), teacher,
               progress=False).fit()
    return teacher


def make(workdir: Path, *overrides: str):
    teacher = teacher_run(workdir)
    student = apply_overrides(CONFIG, [*FLOW, f"teacher.run={teacher}", f"init.from_run={teacher}",
                                       "train.recipe=reflow", "fewstep.coupling_sampler=flow_heun",
                                       "fewstep.coupling_nfe=3", "train.steps=4", *overrides])
    return ReflowRecipe(config_from_dict(student))


CASE = RecipeCase("reflow", make, steps=4)
