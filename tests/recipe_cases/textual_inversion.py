"""The textual_inversion recipe: two vectors for a new token <my-star> (initialised from "star") on a frozen
tiny MiniLM-conditioned U-Net over 8x8 shapes (a text base run, trained once into the work directory)."""

from pathlib import Path

from denoisekit.engine import Engine
from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import DiffusionRecipe, TextualInversionRecipe

from . import RecipeCase

CONFIG = {
    "data": {"name": "shapes", "size": 8, "length": 64, "max_shapes": 1, "return_masks": False, "cache": True},
    "model": {"name": "unet", "in_channels": 3, "channels": 8, "channel_mult": [1], "num_res_blocks": 1,
              "attention_levels": [0], "mid_attention": False, "head_channels": 8, "norm_groups": 4,
              "dropout": 0.0, "context_dim": 384},
    "optim": {"lr": 1e-3},
    "ema": {"kind": "power", "sigma_rel": 0.1},
    "condition": {"kind": "text", "dropout": 0.0, "encoder": "minilm", "max_tokens": 16},
    "train": {"steps": 2, "batch_size": 4, "log_every": 2, "save_every": 2, "keep_last": 2, "device": "cpu"},
    "sample": {"n": 0},
}


def base_run(workdir: Path) -> Path:
    base = Path(workdir) / "ti_base"
    if not (base / "checkpoints").is_dir():
        Engine(DiffusionRecipe(config_from_dict(CONFIG)), base, progress=False).fit()
    return base


def make(workdir: Path, *overrides: str):
    cfg = apply_overrides(CONFIG, [f"init.from_run={base_run(workdir)}", "train.recipe=textual_inversion",
                                   "train.steps=6", "train.save_every=3", "optim.lr=1e-2",
                                   "textual_inversion.tokens=[<my-star>]", "textual_inversion.initializer=star",
                                   "textual_inversion.num_vectors=2", "textual_inversion.replace=star", *overrides])
    return TextualInversionRecipe(config_from_dict(cfg))


CASE = RecipeCase("textual_inversion", make, steps=6)
