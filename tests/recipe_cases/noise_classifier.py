"""The noise-conditional classifier recipe: a tiny attention-free classifier of noisy 8x8 digits (EDM process,
lognormal noise levels), with grad accumulation and warm-up + cosine LR (GroupNorm, no dropout: nothing in a
step draws from a process's global RNG)."""

from denoisekit.train.classifier import NoiseClassifierRecipe, classifier_config_from_dict

from . import RecipeCase

CONFIG = {
    "data": {"name": "digits", "size": 8, "split": "train"},
    "model": {"in_channels": 1, "num_classes": 10, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention": False, "head_channels": 8, "norm_groups": 4},
    "process": {"name": "edm", "time_input": "log_sigma"},
    "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1},
    "train": {"steps": 6, "batch_size": 8, "grad_accum": 2, "log_every": 2, "save_every": 3, "keep_last": 2,
              "noise_levels": "lognormal", "eval_sigmas": [0.5], "device": "cpu"},
}


def make(workdir, *overrides):
    return NoiseClassifierRecipe(classifier_config_from_dict(CONFIG, overrides))


CASE = RecipeCase("noise_classifier", make, steps=6)
