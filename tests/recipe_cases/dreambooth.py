"""The dreambooth recipe: full fine-tuning of the tiny MiniLM-conditioned shapes base (the textual_inversion
case's base run) on 4 images of the subject, with prior preservation on 4 class images the base generates."""

from pathlib import Path

from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import DreamBoothRecipe

from . import RecipeCase
from .textual_inversion import CONFIG, base_run

DREAMBOOTH = ["train.recipe=dreambooth", "data.subject=1.0", "data.length=4", "train.steps=6", "train.save_every=3",
              "dreambooth.instance_prompt=a large sks star", "dreambooth.class_prompt=a large orange star",
              "dreambooth.num_class=4", "dreambooth.prior_weight=1.0", "sample.nfe=4"]


def make(workdir: Path, *overrides: str):
    cfg = apply_overrides(CONFIG, [f"init.from_run={base_run(workdir)}", *DREAMBOOTH, *overrides])
    return DreamBoothRecipe(config_from_dict(cfg))


CASE = RecipeCase("dreambooth", make, steps=6)
