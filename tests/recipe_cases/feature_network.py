"""The FID feature-network recipe: a tiny VGG-style classifier of 200 digits with its augmentation (shift and
pixel noise) and feature dropout drawn per sample, BatchNorm over groups of 4 (so 2 processes of 4 images
normalise as 1 process of 8), two label heads with missing labels, and the one-cycle LR profile."""

import torch

from denoisekit.eval.feature_recipe import FeatureNetworkRecipe, FeatureRunConfig
from denoisekit.eval.features import ClassifierConfig, digits_labelled

from . import RecipeCase

NETWORK = ClassifierConfig(image_size=8, width=4, feature_dim=8, epochs=1, batch_size=8, dropout=0.2)


def make(workdir, *overrides):
    x, y = digits_labelled()
    x, labels = x[:60], torch.stack([y[:60], y[:60] % 2], 1)
    labels[:10, 1] = -1  # a missing attribute
    config = FeatureRunConfig.create(NETWORK, "case", x, labels, (10, 2), bn_batch=4, save_every=3, keep_last=2,
                                     log_every=2)
    return FeatureNetworkRecipe(config, x, labels)


CASE = RecipeCase("feature_network", make, steps=6)
