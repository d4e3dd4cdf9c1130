"""The ``fewstep`` section of a run config: the options of the few-step recipes (consistency, reflow, meanflow).

=================  ==================================================================================
key                meaning
=================  ==================================================================================
levels             N of consistency distillation's Karras grid (Song et al. 2023, Sec. 6: 18 on CIFAR-10)
solver             the teacher's ODE step between adjacent levels: ``heun`` (the paper's), ``euler`` or
                   ``dpmpp_2s`` (one step has no history, so a multistep solver such as DPM-Solver++(2M)
                   would be its first-order start, i.e. ``euler``; the singlestep 2S is its 2nd-order kin)
metric             ``l2`` (squared, mean over dimensions), ``pseudo_huber`` (Song & Dhariwal 2023, Sec. 3.3) or
                   ``auto``: ``l2`` for distillation, ``pseudo_huber`` for consistency training
huber_c            pseudo-Huber's c; 0: ``0.00054 sqrt(d)`` of the data's dimension d (iCT)
mu                 CD's target EMA rate (Song et al. 2023, Alg. 2; 0.95 in their CD runs; 0: the student)
rho                the Karras grid's rho (7)
s0, s1             iCT's discretisation curriculum N(k): from s0 + 1 to s1 + 1 levels (10 and 1280)
p_mean, p_std      iCT's lognormal level distribution (-1.1, 2.0)
coupling_sampler   reflow: the deterministic sampler whose teacher ODE makes the (noise, sample) pairs
coupling_nfe       reflow: its network evaluations per pair (32)
coupling_schedule  reflow: its grid (``auto``: uniform in t for a flow)
one_step           reflow: train at ``t = t_max`` only (Liu et al. 2023's distillation to one Euler step)
interval_ratio     meanflow: the fraction of samples with ``r < t`` (Geng et al. 2025: 0.25 on ImageNet)
adaptive_p         meanflow: the adaptive weight's power p, ``1 / (||Delta||^2 + c)^p`` (1.0; 0: plain L2)
adaptive_c         meanflow: its c (1e-3); the (t, r) distribution is the ``loss`` section's noise levels
=================  ==================================================================================

Both recipes' grids run from :data:`~denoisekit.prediction.CONSISTENCY_SIGMA_MIN` to the process's
``sigma_max`` (80 for ``process.name: edm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..options import Section
from ..samplers import SAMPLERS, STOCHASTIC
from ..schedules import SCHEDULES

Solver = Literal["heun", "euler", "dpmpp_2s"]
Metric = Literal["auto", "l2", "pseudo_huber"]


@dataclass(frozen=True)
class FewStepConfig(Section):
    """Options of the few-step recipes (see the module docstring); other recipes ignore them."""

    _key: ClassVar[str] = "fewstep"
    levels: int = 18
    solver: Solver = "heun"
    metric: Metric = "auto"
    huber_c: float = 0.0
    mu: float = 0.95
    rho: float = 7.0
    s0: int = 10
    s1: int = 1280
    p_mean: float = -1.1
    p_std: float = 2.0
    coupling_sampler: str = "flow_heun"
    coupling_nfe: int = 32
    coupling_schedule: str = "auto"
    one_step: bool = False
    interval_ratio: float = 0.25
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3

    def _check(self) -> None:
        self._require(self.levels >= 2, "levels", ">= 2")
        self._require(self.huber_c >= 0, "huber_c", ">= 0 (0: 0.00054 sqrt(d))")
        self._require(0 <= self.mu < 1, "mu", "in [0, 1)")
        self._require(self.rho > 0, "rho", "> 0")
        self._require(1 <= self.s0 <= self.s1, "s0", "an integer >= 1 and <= fewstep.s1")
        self._require(self.p_std > 0, "p_std", "> 0")
        deterministic = sorted(set(SAMPLERS) - STOCHASTIC)
        self._require(self.coupling_sampler in deterministic, "coupling_sampler",
                      f"a deterministic sampler (an ODE coupling): one of {', '.join(deterministic)}")
        self._require(self.coupling_nfe >= 1, "coupling_nfe", ">= 1")
        self._require(self.coupling_schedule in SCHEDULES, "coupling_schedule", f"one of {', '.join(SCHEDULES)}")
        self._require(0 <= self.interval_ratio <= 1, "interval_ratio", "in [0, 1]")
        self._require(self.adaptive_p >= 0, "adaptive_p", ">= 0")
        self._require(self.adaptive_c > 0, "adaptive_c", "> 0")
