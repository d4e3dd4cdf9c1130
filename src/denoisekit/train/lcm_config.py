"""The ``lcm`` section of a run config: what LCM-LoRA adds to consistency distillation (other recipes ignore it).

=========  ======================================================================================
key        meaning
=========  ======================================================================================
skip       LCM's skipping step k (Luo et al. 2023, Sec. 4.3): the teacher's ODE step goes from
           level ``n + k`` of the ``fewstep.levels`` grid to level ``n`` (1: adjacent levels, Song et
           al. 2023's CD; LCM takes k = 20 of SD's 1000 steps, i.e. a 50-level DDIM grid)
cfg_min,   the classifier-free guidance scale of the teacher's ODE step, drawn per sample uniformly in
cfg_max    ``[cfg_min, cfg_max]`` (LCM's guided distillation, Sec. 4.2); our scale is LCM's omega + 1,
           so their omega in [2, 14] is [3, 15] here; 1: the unguided teacher
=========  ======================================================================================

The student is the base network plus a LoRA adapter (the ``lora`` section) under the ``consistency``
prediction; the teacher's solver, grid, metric and target EMA are the ``fewstep`` section's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import Section


@dataclass(frozen=True)
class LcmSection(Section):
    """Options of the ``lcm_lora`` recipe (see the module docstring)."""

    _key: ClassVar[str] = "lcm"
    skip: int = 1
    cfg_min: float = 1.0
    cfg_max: float = 1.0

    def _check(self) -> None:
        self._require(self.skip >= 1, "skip", "an integer >= 1 (and below fewstep.levels)")
        self._require(self.cfg_min >= 0, "cfg_min", ">= 0")
        self._require(self.cfg_max >= self.cfg_min, "cfg_max", ">= lcm.cfg_min")

    @property
    def guided(self) -> bool:
        """Whether the teacher step is guided at all (a scale other than 1 can be drawn)."""
        return not (self.cfg_min == self.cfg_max == 1.0)
