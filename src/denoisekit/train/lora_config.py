"""The ``lora`` section of a run config: the adapter the ``lora`` recipe trains (other recipes ignore it).

=========  ======================================================================================
key        meaning
=========  ======================================================================================
rank       r of ``W + (alpha / r) B A`` (Hu et al. 2022; 1-16 for a style or a subject)
alpha      the scale's numerator (null: r, a scale of 1)
dropout    dropout on the adapter's input; it draws from torch's global generator, so exact resume
           and 1 process == N need 0
targets    the ``nn.Linear`` names adapted: the attention projections ``qkv``, ``q``, ``kv``, ``proj``
convs      also the 3x3 convolutions of the U-Net's residual blocks (``conv1``, ``conv2``)
=========  ======================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..models.lora import ATTENTION_TARGETS, LoraConfig
from ..options import Section


@dataclass(frozen=True)
class LoraSection(Section):
    """Options of the ``lora`` recipe (see the module docstring)."""

    _key: ClassVar[str] = "lora"
    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = ATTENTION_TARGETS
    convs: bool = False

    def _check(self) -> None:
        self._require(self.rank >= 1, "rank", "an integer >= 1")
        self._require(self.alpha is None or self.alpha > 0, "alpha", "> 0 (or null: the rank)")
        self._require(0 <= self.dropout < 1, "dropout", "in [0, 1)")
        self._require(bool(self.targets) or self.convs, "targets", "non-empty unless lora.convs is true")

    def adapter(self) -> LoraConfig:
        """The adapter this section describes."""
        return LoraConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout, targets=tuple(self.targets),
                          convs=self.convs)
