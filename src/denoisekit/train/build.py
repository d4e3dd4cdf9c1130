"""What a diffusion run's config builds: its dataset, network (wrapped as its condition kind says),
process and :class:`~denoisekit.prediction.Denoiser`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..conditioning import condition_kind
from ..options import build_entry
from ..prediction import Denoiser
from ..process import Process, get_process
from .config import Config, DataConfig, ModelConfig


def build_dataset(config: Config) -> Any:
    """The training dataset (items are dicts with ``image`` and optionally ``label``, ``caption``), restricted to
    the classes ``data.only_labels`` when given."""
    dataset = build_entry(DataConfig.entry(config.data.name), config.data.options)
    return LabelSubset(dataset, config.data.only_labels) if config.data.only_labels else dataset


class LabelSubset(Dataset):
    """The items of ``dataset`` whose ``label`` is one of ``labels`` (in order); class names are kept."""

    def __init__(self, dataset: Any, labels: Sequence[int]):
        self.dataset, wanted = dataset, {int(v) for v in labels}
        found = getattr(dataset, "labels", None)
        values = [int(v) for v in found] if found is not None and len(found) == len(dataset) else \
            [int(dataset[i].get("label", -1)) for i in range(len(dataset))]
        self.index = [i for i, v in enumerate(values) if v in wanted]
        if not self.index:
            raise ValueError(f"data.only_labels {sorted(wanted)}: the dataset has no item of these classes "
                             f"(its labels: {sorted(set(values))[:20]})")
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.index[i]]

    def set_epoch(self, epoch: int) -> None:  # per-epoch augmentations of the wrapped dataset still work
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)


def build_model(config: Config) -> nn.Module:
    """A freshly initialised network, seeded by ``train.seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        net = build_entry(ModelConfig.entry(config.model.name), config.model.options)
        # the condition's wrapper (a text model encodes its prompts; a learned encoder trains with it)
        return condition_kind(config.condition.kind).wrap_network(net, config.condition_options())


def build_process(config: Config) -> Process:
    return get_process(config.process.name, **config.process.options)


def build_denoiser(config: Config, net: Any = None) -> Denoiser:
    """``net`` (default: :func:`build_model`) wrapped as the run's :class:`Denoiser`."""
    p = config.process
    return Denoiser(build_model(config) if net is None else net, build_process(config), p.prediction,  # type: ignore[arg-type]
                    time_input=p.time_input, sigma_data=p.sigma_data)
