"""The controlnet recipe: a ControlNet (trainable copy of the encoder, zero convs, hint encoder) on a frozen
class-conditional base U-Net, controlled by the Sobel edges of each batch's digits (a diffusion case run,
trained once into the work directory)."""

from pathlib import Path

from denoisekit.engine import Engine
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import ControlNetRecipe, DiffusionRecipe

from . import RecipeCase
from .diffusion import CONFIG

BASE = ["model.dropout=0.0"]


def base_run(workdir: Path) -> Path:
    base = Path(workdir) / "controlnet_base"
    if not (base / "checkpoints").is_dir():
        Engine(DiffusionRecipe(config_from_dict(apply_overrides(CONFIG, BASE + ["train.steps=2"]))), base,
               progress=False).fit()
    return base


def make(workdir: Path, *overrides: str):
    cfg = apply_overrides(CONFIG, BASE + [f"init.from_run={base_run(workdir)}", "train.recipe=controlnet",
                                          "controlnet.hidden=[4,8]", "optim.lr=1e-2", *overrides])
    return ControlNetRecipe(config_from_dict(cfg))


CASE = RecipeCase("controlnet", make, steps=6)
