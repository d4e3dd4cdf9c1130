"""The lcm_lora recipe: a rank-2 LCM-LoRA (attention and residual convolutions) on the tiny class-conditional EDM
teacher of the consistency_distill case, distilled under per-sample guidance scales in [1.5, 3] with a skipping
step of 2 and an EMA target of the adapter (``fewstep.mu``, kept in ``recipe.safetensors``)."""

from pathlib import Path

from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import LcmLoraRecipe

from . import RecipeCase
from .consistency_distill import STUDENT, teacher_run
from .diffusion import CONFIG


def make(workdir: Path, *overrides: str):
    base = teacher_run(workdir)
    cfg = apply_overrides(CONFIG, [*STUDENT, "model.dropout=0.0", f"teacher.run={base}", f"init.from_run={base}",
                                   "train.recipe=lcm_lora", "lora.rank=2", "lora.alpha=4", "lora.convs=true",
                                   "fewstep.levels=8", "fewstep.mu=0.9", "lcm.skip=2", "lcm.cfg_min=1.5",
                                   "lcm.cfg_max=3", "optim.lr=1e-2", "train.steps=4", *overrides])
    return LcmLoraRecipe(config_from_dict(cfg))


CASE = RecipeCase("lcm_lora", make, steps=4)
