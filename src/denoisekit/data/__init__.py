"""Datasets. Two-dimensional toy distributions (:data:`DATASETS`) and image datasets
(:data:`IMAGE_DATASETS`: torch Datasets of dicts with ``image`` (C, H, W) in [-1, 1], optional
``label`` and ``caption``)."""

from .digits import DigitsConfig, DigitsDataset
from .emoji import EmojiConfig, EmojiDataset
from .folder import FolderConfig, FolderDataset
from .npz import NpzConfig, NpzDataset
from .shapes import ShapesConfig, ShapesDataset
from .shapes3 import Shapes3Config, Shapes3Dataset
from .toy2d import DATASETS, gmm_mixture, sample_toy2d, toy2d_log_prob, toy2d_oracle

IMAGE_DATASETS = {"digits": DigitsDataset, "shapes": ShapesDataset, "shapes3": Shapes3Dataset, "emoji": EmojiDataset,
                  "folder": FolderDataset, "npz": NpzDataset}

__all__ = ["DATASETS", "IMAGE_DATASETS", "DigitsConfig", "DigitsDataset", "EmojiConfig", "EmojiDataset", "FolderConfig", "FolderDataset",
           "NpzConfig", "NpzDataset", "Shapes3Config", "Shapes3Dataset", "ShapesConfig", "ShapesDataset", "gmm_mixture", "sample_toy2d",
           "toy2d_log_prob", "toy2d_oracle"]
