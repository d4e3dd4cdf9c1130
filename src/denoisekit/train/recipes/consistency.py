"""Consistency distillation and consistency training (``train.recipe: consistency_distill`` / ``consistency_train``).

A consistency model ``f(y, sigma)`` maps every point of a probability-flow trajectory to its origin; the
``consistency`` prediction (:mod:`denoisekit.prediction`) makes ``f(y, sigma_min) = y`` hold exactly, and the
``consistency`` sampler draws with it in 1 or a few steps. Both recipes train ``f`` on adjacent levels
``sigma_n < sigma_{n+1}`` of a Karras grid from ``sigma_min = 0.002`` to the process's ``sigma_max``
(VE frame, ``y = x0 + sigma z``):

- **Consistency distillation** (Song et al. 2023, Algorithm 2): ``n ~ U{1..N-1}``, one ODE step of a frozen
  teacher (``teacher.run``; ``fewstep.solver``) from ``y_{n+1} = x0 + sigma_{n+1} z`` to ``y^_n``, and the loss
  ``d(f_theta(y_{n+1}, sigma_{n+1}), f_theta-(y^_n, sigma_n))`` with ``theta- <- mu theta- + (1 - mu) theta``
  after every update (``fewstep.mu``; the target network is checkpointed in ``recipe.safetensors``).
- **Improved consistency training** (Song & Dhariwal 2023, "iCT"): no teacher; ``y^_n = x0 + sigma_n z`` with the
  same ``z`` (the one-sample estimate of the teacher step), the student itself under stop-grad as the target
  (no EMA), the pseudo-Huber metric ``sqrt(||a - b||^2 + c^2) - c`` with ``c = 0.00054 sqrt(d)`` (Sec. 3.3),
  the curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1``, ``K' = floor(K / (log2 floor(s1/s0) + 1))``
  (Sec. 3.4, eq. 7), levels drawn by ``p(sigma_n) ~ erf((ln sigma_{n+1} - P_mean) / (sqrt 2 P_std)) -
  erf((ln sigma_n - P_mean) / (sqrt 2 P_std))`` (Sec. 3.5) and weighted by ``1 / (sigma_{n+1} - sigma_n)`` (Sec. 3.2).

A config (the student; ``process.prediction`` must be ``consistency``)::

    train:   {recipe: consistency_distill, steps: 2000}
    process: {name: edm, prediction: consistency}
    teacher: {run: runs/digits-edm}           # consistency_train: no teacher
    init:    {from_run: runs/digits-edm}      # optional: start from the teacher's weights
    fewstep: {levels: 18, solver: heun, mu: 0.95}
    sample:  {sampler: consistency, nfe: 1}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, get_args

import torch
from torch import Tensor, nn

from ...denoiser import DenoiserFn
from ...engine.checkpoint import load_weights
from ...prediction import CONSISTENCY_SIGMA_MIN
from ...schedules import get_sigmas_karras
from ..build import build_denoiser
from ..fewstep_config import Metric, Solver
from .diffusion import DiffusionRecipe
from .distill import DistillRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine

SOLVERS: tuple[str, ...] = get_args(Solver)
METRICS: tuple[str, ...] = tuple(m for m in get_args(Metric) if m != "auto")


# ------------------------------------------------------------------------------------------------- grids
def karras_levels(n: int, sigma_max: float, rho: float = 7.0, sigma_min: float = CONSISTENCY_SIGMA_MIN) -> Tensor:
    """The ``n`` levels ``sigma_1 < ... < sigma_n`` of Karras et al. 2022, eq. 5, increasing, float64."""
    return get_sigmas_karras(n, sigma_min, sigma_max, rho)[:-1].flip(0)


def ict_levels(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's discretisation curriculum (Song & Dhariwal 2023, eq. 7): the number of levels at step ``k`` of
    ``total``, ``min(s0 2^floor(k / K'), s1) + 1`` with ``K' = floor(total / (floor(log2 floor(s1 / s0)) + 1))``."""
    k_prime = max(math.floor(total / (math.floor(math.log2(math.floor(s1 / s0))) + 1)), 1)
    return min(s0 * 2 ** (k // k_prime), s1) + 1


def lognormal_level_probs(levels: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """``p(sigma_i)`` for ``i = 1..N-1`` of increasing ``levels`` ``(N,)`` (Song & Dhariwal 2023, Sec. 3.5): the
    lognormal mass between ``sigma_i`` and ``sigma_{i+1}``, normalised; float64 ``(N-1,)``."""
    cdf = torch.erf((torch.log(levels.to(torch.float64)) - p_mean) / (math.sqrt(2) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


# ------------------------------------------------------------------------------------------------- metric
def huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant ``0.00054 sqrt(d)`` for data of ``d`` dimensions (Song & Dhariwal 2023, Sec. 3.3)."""
    return 0.00054 * math.sqrt(dim)


def consistency_metric(a: Tensor, b: Tensor, metric: str = "l2", c: float = 0.0) -> Tensor:
    """Per-example distance ``(B,)`` of ``(B, ...)`` tensors: ``l2`` the mean squared difference, ``pseudo_huber``
    ``sqrt(||a - b||^2 + c^2) - c`` (Charbonnier 1997; Song & Dhariwal 2023, eq. 5; ``c`` > 0)."""
    sq = ((a - b) ** 2).flatten(1)
    if metric == "l2":
        return sq.mean(1)
    if metric == "pseudo_huber":
        if not c > 0:
            raise ValueError(f"pseudo_huber needs c > 0, got {c}")
        return torch.sqrt(sq.sum(1) + c**2) - c
    raise ValueError(f"unknown consistency metric {metric!r}; choose one of {', '.join(METRICS)}")


# ------------------------------------------------------------------------------------------------- teacher step
def _col(v: Tensor, y: Tensor) -> Tensor:
    return v.to(device=y.device, dtype=y.dtype).view(-1, *[1] * (y.ndim - 1))


@torch.no_grad()
def teacher_ode_step(teacher: DenoiserFn, y: Tensor, sigma: Tensor, nxt: Tensor, solver: Solver = "heun",
                     cond: Any = None) -> Tensor:
    """One probability-flow ODE step of ``teacher`` from ``y`` ``(B, ...)`` at ``sigma`` to ``nxt`` (``(B,)``, per
    sample, both > 0), VE frame: one step of :func:`~denoisekit.samplers.sample_heun` (EDM Algorithm 1),
    :func:`~denoisekit.samplers.sample_euler` or :func:`~denoisekit.samplers.sample_dpmpp_2s` (``r1 = 1/2``), with
    per-sample levels so that one batched teacher call serves every level (tests/test_consistency.py holds each
    equal to its sampler on a one-step grid)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown fewstep.solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    s, n = _col(sigma, y), _col(nxt, y)
    x0 = teacher(y, sigma, cond)
    if solver == "dpmpp_2s":  # DPM-Solver++(2S), Lu et al. 2022b, Alg. 1: midpoint in lambda = -log sigma
        mid = torch.sqrt(sigma * nxt)
        m = _col(mid, y)
        u = (m / s) * y + (1 - m / s) * x0
        x1 = teacher(u, mid, cond)
        return (n / s) * y + (1 - n / s) * x1
    d = (y - x0) / s
    y_next = y + (n - s) * d
    if solver == "euler":
        return y_next
    d_next = (y_next - teacher(y_next, nxt, cond)) / n
    return y + (n - s) * 0.5 * (d + d_next)


# ------------------------------------------------------------------------------------------------- losses
def _draws(x0: Tensor, gens: torch.Generator | Sequence[torch.Generator], probs: Tensor) -> tuple[Tensor, Tensor]:
    """A level index ``n`` per sample (``P(n) = probs[n]``) and the noise ``z``: from each sample's own generator
    (the engine's per-sample streams), or batched from one generator."""
    if isinstance(gens, torch.Generator):
        idx = torch.multinomial(probs, x0.shape[0], replacement=True, generator=gens)
        return idx, torch.randn(x0.shape, generator=gens).to(x0)
    idx = torch.stack([torch.multinomial(probs, 1, generator=g)[0] for g in gens])
    z = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
    return idx, z


def consistency_distillation_loss(student: DenoiserFn, target: DenoiserFn, teacher: DenoiserFn, x0: Tensor,
                                  gens: torch.Generator | Sequence[torch.Generator], levels: Tensor, *,
                                  solver: Solver = "heun", metric: str = "l2", c: float = 0.0,
                                  cond: Any = None, skip: int = 1) -> Tensor:
    """Song et al. 2023, Algorithm 2 (lambda = 1): per-example ``(B,)`` loss for data ``x0`` ``(B, ...)`` on the
    increasing ``levels`` ``(N,)``; ``target`` is the EMA network (evaluated without gradients). ``skip``: the
    teacher steps from level ``n + skip`` to ``n`` (LCM's skipping step k, Luo et al. 2023; 1: adjacent levels)."""
    if not 1 <= skip < len(levels):
        raise ValueError(f"skip must be in 1..{len(levels) - 1} for {len(levels)} levels, got {skip}")
    uniform = torch.ones(len(levels) - skip, dtype=torch.float64)
    idx, z = _draws(x0, gens, uniform)
    lo, hi = levels[idx], levels[idx + skip]
    y = x0 + _col(hi, x0) * z
    y_hat = teacher_ode_step(teacher, y, hi, lo, solver, cond)
    with torch.no_grad():
        want = target(y_hat, lo, cond)
    return consistency_metric(student(y, hi, cond), want, metric, c)


def consistency_training_loss(student: DenoiserFn, x0: Tensor, gens: torch.Generator | Sequence[torch.Generator],
                              levels: Tensor, *, p_mean: float = -1.1, p_std: float = 2.0,
                              metric: str = "pseudo_huber", c: float = 0.0, cond: Any = None) -> Tensor:
    """Improved consistency training (Song & Dhariwal 2023): per-example ``(B,)`` loss
    ``d(f(x0 + sigma_{n+1} z, sigma_{n+1}), sg f(x0 + sigma_n z, sigma_n)) / (sigma_{n+1} - sigma_n)``,
    ``n`` lognormal-distributed over the increasing ``levels`` ``(N,)``."""
    idx, z = _draws(x0, gens, lognormal_level_probs(levels, p_mean, p_std))
    lo, hi = levels[idx], levels[idx + 1]
    with torch.no_grad():
        want = student(x0 + _col(lo, x0) * z, lo, cond)
    d = consistency_metric(student(x0 + _col(hi, x0) * z, hi, cond), want, metric, c)
    return d / (hi - lo).to(d)


def resolve_metric(metric: str, recipe: str) -> str:
    """``fewstep.metric``; ``auto`` is ``l2`` for distillation (Song et al. 2023's L2) and ``pseudo_huber`` for iCT."""
    return metric if metric != "auto" else ("pseudo_huber" if recipe == "consistency_train" else "l2")


# ------------------------------------------------------------------------------------------------- recipes
class _ConsistencyBase:
    """Checks and facts both recipes share (a mixin ahead of the diffusion recipe in the MRO)."""

    config: Any
    image_shape: tuple[int, ...]
    name: str

    def _check_student(self) -> None:
        p = self.config.process
        if p.prediction != "consistency":
            raise ValueError(f"train.recipe {self.name!r} trains a consistency model: process.prediction must be "
                             f"'consistency' (its c_skip / c_out boundary condition), got {p.prediction!r}")

    def _sigma_max(self, process: Any) -> float:
        lo, hi = float(process.sigma_min), float(process.sigma_max)
        if not (lo <= CONSISTENCY_SIGMA_MIN * (1 + 1e-6) and math.isfinite(hi) and hi > CONSISTENCY_SIGMA_MIN):
            raise ValueError(f"train.recipe {self.name!r} needs a process whose VE noise spans "
                             f"[{CONSISTENCY_SIGMA_MIN}, sigma_max]; process {self.config.process.name!r} spans "
                             f"[{lo:.4g}, {hi:.4g}] (use process.name: edm)")
        return hi

    def _c(self) -> float:
        f = self.config.fewstep
        return f.huber_c if f.huber_c > 0 else huber_c(math.prod(self.image_shape))


class ConsistencyDistillRecipe(_ConsistencyBase, DistillRecipe):
    """Consistency distillation of ``teacher.run`` (see the module docstring)."""

    name = "consistency_distill"

    def dependencies(self) -> list[Any]:
        self._check_student()
        if self.config.teacher.run is None:
            raise ValueError("train.recipe is 'consistency_distill' but teacher.run is not set (the diffusion run "
                             "whose ODE the student distils; consistency_train needs none)")
        return super().dependencies()

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)
        f = self.config.fewstep
        sigma_max = self._sigma_max(self.denoiser.process)
        tp = self.teacher.process
        if tp.sigma_min > CONSISTENCY_SIGMA_MIN * (1 + 1e-6) or tp.sigma_max < sigma_max * (1 - 1e-6):
            raise ValueError(f"teacher.run {self.config.teacher.run!r} covers VE noise [{tp.sigma_min:.4g}, "
                             f"{tp.sigma_max:.4g}], the student's grid [{CONSISTENCY_SIGMA_MIN}, {sigma_max:.4g}]")
        self.levels = karras_levels(f.levels, sigma_max, f.rho)
        #: theta-, the EMA target of Algorithm 2 (mu = 0: the student itself, under stop-grad)
        self.target = copy.deepcopy(modules["net"]).requires_grad_(False) if f.mu > 0 else None
        self.target_denoiser = None if self.target is None else build_denoiser(self.config, self.target)
        return modules

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        f, student = self.config.fewstep, self.denoiser
        target = student if self.target_denoiser is None else self.target_denoiser
        loss = consistency_distillation_loss(student, target, self.teacher, x0, gens, self.levels, solver=f.solver,
                                             metric=resolve_metric(f.metric, self.name), c=self._c(), cond=cond)
        return {"loss": loss.mean()}

    @torch.no_grad()
    def after_update(self, engine: Engine) -> None:
        if self.target is not None:  # theta- <- mu theta- + (1 - mu) theta
            mine, net = list(self.target.parameters()), [p.detach() for p in self.modules["net"].parameters()]
            torch._foreach_lerp_(mine, net, 1.0 - self.config.fewstep.mu)

    def extra_tensors(self) -> dict[str, Tensor]:
        return {} if self.target is None else dict(self.target.state_dict())

    def load_extra_tensors(self, tensors: Mapping[str, Tensor], source: str) -> None:
        if self.target is not None:
            load_weights(self.target, tensors, f"{source} (the consistency target network)")

    def state(self) -> dict[str, Any]:
        f = self.config.fewstep
        return {**super().state(), "fewstep": {"method": "consistency_distill", "levels": f.levels,
                                               "solver": f.solver, "metric": resolve_metric(f.metric, self.name),
                                               "mu": f.mu}}


class ConsistencyTrainRecipe(_ConsistencyBase, DiffusionRecipe):
    """Improved consistency training from the data alone (see the module docstring)."""

    name = "consistency_train"
    #: N(k) is planned over train.steps (eq. 7): a new length would change the levels of every later step
    resumable = tuple(k for k in DiffusionRecipe.resumable if k != "train.steps")

    def dependencies(self) -> list[Any]:
        self._check_student()
        return super().dependencies()

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)
        self.sigma_max = self._sigma_max(self.denoiser.process)
        self.num_levels = ict_levels(0, self.config.train.steps, self.config.fewstep.s0, self.config.fewstep.s1)
        return modules

    def step(self, batch: Any, gens: Sequence[torch.Generator], engine: Engine) -> dict[str, Tensor]:
        x0 = batch["image"].to(engine.device, torch.float32)
        cond = self.condition.training(batch, gens, engine.device)
        f = self.config.fewstep
        self.num_levels = ict_levels(engine.step, self.config.train.steps, f.s0, f.s1)
        levels = karras_levels(self.num_levels, self.sigma_max, f.rho)
        loss = consistency_training_loss(self.denoiser, x0, gens, levels, p_mean=f.p_mean, p_std=f.p_std,
                                         metric=resolve_metric(f.metric, self.name), c=self._c(), cond=cond)
        return {"loss": loss.mean()}

    def state(self) -> dict[str, Any]:
        f = self.config.fewstep
        return {**super().state(), "fewstep": {"method": "consistency_train", "levels": self.num_levels,
                                               "s0": f.s0, "s1": f.s1,
                                               "metric": resolve_metric(f.metric, self.name)}}
