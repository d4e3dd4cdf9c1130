"""The lora recipe: a rank-2 adapter (attention projections and residual convolutions) on a frozen base U-Net
with a middle attention block (a diffusion case run, trained once into the work directory)."""

from pathlib import Path

from denoisekit.engine import Engine
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import DiffusionRecipe, LoraRecipe

from . import RecipeCase
from .diffusion import CONFIG

BASE = ["model.mid_attention=true", "model.dropout=0.0"]


def base_run(workdir: Path) -> Path:
    base = Path(workdir) / "lora_base"
    if not (base / "checkpoints").is_dir():
        Engine(DiffusionRecipe(config_from_dict(apply_overrides(CONFIG, BASE + ["train.steps=2"]))), base,
               progress=False).fit()
    return base


def make(workdir: Path, *overrides: str):
    cfg = apply_overrides(CONFIG, BASE + [f"init.from_run={base_run(workdir)}", "train.recipe=lora", "lora.rank=2",
                                          "lora.alpha=4", "lora.convs=true", "optim.lr=1e-2", *overrides])
    return LoraRecipe(config_from_dict(cfg))


CASE = RecipeCase("lora", make, steps=6)
