"""The ``controlnet`` section of a run config: the control module the ``controlnet`` recipe trains (other recipes
ignore it).

=========  ======================================================================================
key        meaning
=========  ======================================================================================
kind       ``controlnet`` (Zhang et al. 2023: a trainable copy of the encoder, zero convs) or
           ``t2i_adapter`` (Mou et al. 2023: a small encoder of the control image alone)
signal     the control image computed from each batch (:mod:`denoisekit.data.control`): ``edges``
           (Sobel), ``mask`` (foreground), ``positions`` (shape centres as heat maps)
hidden     widths of the ControlNet's hint encoder, or blocks per level of the T2I-Adapter
=========  ======================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..data.control import SIGNALS
from ..models.controlnet import CONTROL_KINDS, ControlConfig
from ..options import Section


@dataclass(frozen=True)
class ControlNetSection(Section):
    """Options of the ``controlnet`` recipe (see the module docstring)."""

    _key: ClassVar[str] = "controlnet"
    kind: Literal["controlnet", "t2i_adapter"] = "controlnet"
    signal: Literal["edges", "mask", "positions"] = "edges"
    hidden: tuple[int, ...] = (16, 32)

    def _check(self) -> None:
        self._require(self.kind in CONTROL_KINDS, "kind", f"one of {', '.join(CONTROL_KINDS)}")
        self._require(self.signal in SIGNALS, "signal", f"one of {', '.join(SIGNALS)}")
        self._require(bool(self.hidden) and all(h >= 1 for h in self.hidden), "hidden", "a list of widths >= 1")

    def control(self) -> ControlConfig:
        """The control module this section describes (one-channel control images)."""
        return ControlConfig(kind=self.kind, hint_channels=1, hidden=tuple(self.hidden))
