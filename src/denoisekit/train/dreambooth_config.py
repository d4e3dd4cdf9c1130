"""The ``dreambooth`` section of a run config: what the ``dreambooth`` recipe fine-tunes on (Ruiz et al. 2023;
other recipes ignore it).

================  ===============================================================================
key               meaning
================  ===============================================================================
instance_prompt   the prompt of every instance image, with the rare identifier ("a large sks star");
                  null: the dataset's own captions (``data: {name: shapes, subject: 1.0}`` writes "sks")
class_prompt      the subject's class without the identifier ("a large orange star"): the prompt of the
                  class images the base generates before training
num_class         how many class images (generated once, sample ``i`` from seed ``class_seed + i``)
class_seed        their first seed
prior_weight      lambda of the prior-preservation loss (0: none, plain fine-tuning on the instances)
lora              true: LoRA DreamBooth (only the ``lora`` section's adapter trains and is stored);
                  false: every weight of the base trains
================  ===============================================================================

The instance images are the run's dataset: give it a few items (``data.length: 4``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import Section


@dataclass(frozen=True)
class DreamBoothSection(Section):
    """Options of the ``dreambooth`` recipe (see the module docstring)."""

    _key: ClassVar[str] = "dreambooth"
    instance_prompt: str | None = None
    class_prompt: str = ""
    num_class: int = 32
    class_seed: int = 1000
    prior_weight: float = 1.0
    lora: bool = False

    def _check(self) -> None:
        self._require(self.num_class >= 1, "num_class", "an integer >= 1")
        self._require(self.class_seed >= 0, "class_seed", "an integer >= 0")
        self._require(self.prior_weight >= 0, "prior_weight", ">= 0")
