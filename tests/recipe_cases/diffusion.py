"""The diffusion recipe: a tiny class-conditional U-Net on 8x8 digits, with grad accumulation, label dropout,
network dropout (per-sample masks), warm-up + cosine LR and the power EMA."""

from denoisekit.train.config import apply_overrides, config_from_dict
from denoisekit.train.recipes import DiffusionRecipe

from . import RecipeCase

CONFIG = {
    "data": {"name": "digits", "size": 8, "split": "train"},
    "model": {"name": "unet", "in_channels": 1, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_levels": [], "mid_attention": False, "head_channels": 8, "norm_groups": 4, "dropout": 0.1, "num_classes": 10},
    "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1},
    "ema": {"kind": "power", "sigma_rel": 0.1},
    "condition": {"kind": "class", "dropout": 0.2},
    "train": {"steps": 6, "batch_size": 8, "grad_accum": 2, "log_every": 2, "save_every": 3, "keep_last": 2,
              "device": "cpu"},
    "sample": {"n": 0},
}


def make(workdir, *overrides):
    return DiffusionRecipe(config_from_dict(apply_overrides(CONFIG, overrides)))


CASE = RecipeCase("diffusion", make, steps=6)
