"""The MeanFlow objective (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): one network for
every step count, trained from scratch.

On the rectified flow ``z_t = (1 - t) x0 + t eps`` (velocity ``v = eps - x0``), the *average velocity*
``u(z_t, r, t) = 1 / (t - r) int_r^t v(z_s, s) ds`` jumps exactly: ``z_r = z_t - (t - r) u``. Differentiating
``(t - r) u = int_r^t v ds`` in ``t`` gives the **MeanFlow identity** (their eq. 6)::

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt u = v d_z u + d_t u

where the total derivative is one Jacobian-vector product of the network with tangent ``(v, 0, 1)`` on
``(z, r, t)`` (eq. 8; ``torch.func.jvp``). The loss regresses the network onto the identity's right side under
stop-gradient, with the conditional velocity ``v_t = eps - x0`` for ``v`` (eq. 9-10, Algorithm 1)::

    u_tgt = v_t - (t - r) (v_t d_z u_theta + d_t u_theta),   L = sg(w) ||u_theta(z_t, r, t) - sg(u_tgt)||^2

with the adaptive weight ``w = 1 / (||Delta||^2 + c)^p`` (Sec. 4.3; ``p = 0.5`` is a pseudo-Huber loss). At
``r = t`` the target is ``v_t``: plain flow matching. ``(t, r)`` are two draws of the run's noise-level
distribution, sorted so ``r <= t`` (their logit-normal -0.4, 1.0 on ImageNet), and ``r = t`` for a fraction
``1 - interval_ratio`` of the samples (75% in their ImageNet runs). The network embeds ``(t, t - r)``
(:func:`~denoisekit.models.layers.embed_times`); the denoiser then takes a target level
(:meth:`~denoisekit.prediction.Denoiser.forward`'s ``sigma_to``) and :mod:`denoisekit.samplers.meanflow` samples it.
Not implemented: their classifier-free guidance folded into the target (eq. 13-16).

The JVP differentiates the network along ``t``, so its time features must be smooth in ``t``: the networks'
default Fourier band reaches 1e3 rad per unit of ``t`` (it resolves step indices), which makes ``d_t u`` and so the
target huge and noisy. ``model.time_scale: 0.001`` brings the band to at most 1 rad per unit ``t`` (moons, 1500
steps: 1-step sliced W2 0.73 at time scale 1, 0.12 at 1e-3; ``configs/digits-meanflow.yaml`` and
``train2d --objective meanflow`` set it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from .._utils import GeneratorLike, check_choice, randn_like
from ..condition import index_condition
from ..engine.stream import sample_generators, sample_randomness
from ..losses import NOISE_LEVELS, NoiseLevels, sample_times, uniforms
from ..prediction import Denoiser
from ..process import Process, RectifiedFlow


def check_meanflow(process: Process, prediction: str, time_input: str, second_time: Any,
                   keys: Sequence[str] = ("process.name", "process.prediction", "process.time_input",
                                          "model.second_time")) -> None:
    """One line naming the key unless a run can train MeanFlow: a rectified flow without ``sigma_min``, the
    ``flow`` prediction, the network's time in ``t`` (``model`` or ``t``: the JVP's tangent is 1 in it) and a
    network with a second time input; ``keys`` are the config's names of those four."""
    what = "MeanFlow trains the average velocity of a rectified flow"
    if not isinstance(process, RectifiedFlow) or process.sigma_floor != 0:
        raise ValueError(f"{what}: {keys[0]} must be 'flow' (sigma_min 0), got {process.name!r}"
                         + (f" with sigma_min {process.sigma_floor}" if isinstance(process, RectifiedFlow) else ""))
    if prediction != "flow":
        raise ValueError(f"{what}: {keys[1]} must be 'flow' (the network outputs u, a velocity), got {prediction!r}")
    if time_input not in ("model", "t"):
        raise ValueError(f"{what}: {keys[2]} must be 'model' or 't' (the network is given t itself), "
                         f"got {time_input!r}")
    if second_time is not True:
        raise ValueError(f"{what}: the network needs its second time input t - r: set {keys[3]}: true "
                         f"(a network with one: mlp, unet, dit)")


@dataclass(frozen=True)
class MeanFlowLoss:
    """The MeanFlow loss of a :class:`Denoiser` (module docstring): ``loss(denoiser, x0, cond, generator) -> (B,)``.

    ``noise_levels``, ``p_mean``, ``p_std``: the distribution of ``t`` and ``r`` (:func:`~denoisekit.losses.
    sample_times`; on a flow ``lognormal`` is the same as ``logit_normal``); ``interval_ratio``: the fraction
    of samples with ``r < t``; ``adaptive_p``, ``adaptive_c``: the weight ``1 / (||Delta||^2 + c)^p`` (0: plain
    squared error). Defaults: Geng et al. 2025's ImageNet settings (Table 4). ``objective`` names this loss
    in a saved config.
    """

    objective: Literal["meanflow"] = "meanflow"
    noise_levels: NoiseLevels = "logit_normal"
    p_mean: float = -0.4
    p_std: float = 1.0
    interval_ratio: float = 0.25
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3

    def __post_init__(self) -> None:
        check_choice("objective", self.objective, ("meanflow",))
        check_choice("noise level distribution", self.noise_levels, NOISE_LEVELS)
        if not self.p_std > 0:
            raise ValueError(f"MeanFlow p_std must be > 0, got {self.p_std}")
        if not 0 <= self.interval_ratio <= 1:
            raise ValueError(f"MeanFlow interval_ratio (the fraction of r < t) must be in [0, 1], "
                             f"got {self.interval_ratio}")
        if not (self.adaptive_p >= 0 and self.adaptive_c > 0):
            raise ValueError(f"MeanFlow's adaptive weight needs adaptive_p >= 0 and adaptive_c > 0, got "
                             f"{self.adaptive_p}, {self.adaptive_c}")

    def draw_times(self, process: Process, n: int, generator: GeneratorLike = None,
                   device: Any = None) -> tuple[Tensor, Tensor]:
        """``(t, r)`` ``(n,)`` float64 with ``r <= t``: two draws of the noise-level distribution sorted, then
        ``r = t`` unless a uniform draw falls below ``interval_ratio`` (each sample from its own generator)."""
        kw = dict(p_mean=self.p_mean, p_std=self.p_std, generator=generator, device=device)
        a = sample_times(process, n, self.noise_levels, **kw)  # type: ignore[arg-type]
        b = sample_times(process, n, self.noise_levels, **kw)  # type: ignore[arg-type]
        coin = uniforms(n, generator)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        return t, torch.where(coin.to(t.device) < self.interval_ratio, r, t)

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Any = None, generator: GeneratorLike = None,
                 **draws: Tensor) -> Tensor:
        """Per-example ``(B,)`` loss for data ``x0`` ``(B, ...)`` (the weighted term of :meth:`terms`)."""
        return self.terms(denoiser, x0, cond, generator, **draws)[0]

    def terms(self, denoiser: Denoiser, x0: Tensor, cond: Any = None, generator: GeneratorLike = None, *,
              t: Tensor | None = None, r: Tensor | None = None, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(sg(w) ||Delta||^2, ||Delta||^2)``, both ``(B,)``, for data ``x0`` ``(B, ...)``; ``t``, ``r`` ``(B,)``
        and ``eps`` replace their draws (then nothing is drawn for them)."""
        if t is None or r is None:
            t, r = self.draw_times(denoiser.process, x0.shape[0], generator, x0.device)
        eps = randn_like(x0, generator) if eps is None else eps.to(x0)
        z = denoiser.process.add_noise(x0, eps, t)
        v = denoiser.rule.target(x0, eps, denoiser.coefficients(t))  # eps - x0 on the rectified flow
        u, target = average_velocity_target(denoiser.net, z, t, r, v, cond)
        sq = (u.float() - target.float()).pow(2).flatten(1).sum(1)
        if self.adaptive_p == 0:
            return sq, sq
        return sq / (sq.detach() + self.adaptive_c) ** self.adaptive_p, sq


def average_velocity_target(net: Any, z: Tensor, t: Tensor, r: Tensor, v: Tensor,
                            cond: Any = None) -> tuple[Tensor, Tensor]:
    """``(u_theta(z, r, t), sg(u_tgt))`` ``(B, ...)`` of the MeanFlow identity (eq. 10) for a network
    ``net(z, t, cond, second_time=t - r)``: ``u_tgt = v - (t - r) du/dt`` with ``du/dt`` the JVP of the network
    along ``(dz, dt) = (v, 1)``, taken without gradients and only where ``r < t`` (elsewhere ``u_tgt = v``).

    ``u`` is one ordinary pass of ``net`` over the batch, the one that back-propagates (a process-wrapped network
    syncs its gradients there); the JVP runs on the unwrapped network, with PyTorch's math attention (the fused
    kernels have no forward-mode rule) and, inside the engine, with copies of the rows' own dropout generators, so
    that a row's ``du/dt`` sees the dropout mask its ``u`` sees."""
    tt, rr = t.to(z.dtype), r.to(z.dtype)
    target = v.detach().clone()
    jump = (r < t).nonzero().squeeze(1)
    if len(jump):
        inner = net.module if isinstance(net, DistributedDataParallel) else net
        c, r_j = index_condition(cond, jump), rr[jump]

        def u(z_j: Tensor, t_j: Tensor) -> Tensor:
            kw = {"second_time": t_j - r_j}
            return inner(z_j, t_j, **kw) if c is None else inner(z_j, t_j, c, **kw)

        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), _rows_randomness(jump, z.shape[0]):
            _, du_dt = torch.func.jvp(u, (z[jump], tt[jump]), (v[jump], torch.ones_like(tt[jump])))
        gap = (tt[jump] - r_j).view(-1, *[1] * (z.ndim - 1))
        target[jump] = v[jump] - gap * du_dt
    kw = {"second_time": tt - rr}
    return (net(z, tt, **kw) if cond is None else net(z, tt, cond, **kw)), target


def _rows_randomness(rows: Tensor, batch: int) -> Any:
    """Per-sample randomness for a pass over ``rows`` of the batch: copies of those rows' generators of the
    enclosing :func:`~denoisekit.engine.stream.sample_randomness` block (the batch's own pass still draws the
    same masks from the originals); no block, nothing to copy."""
    gens = sample_generators()
    if gens is None or len(gens) != batch:
        return contextlib.nullcontext()
    copies = []
    for i in rows.tolist():
        g = torch.Generator(device=gens[i].device)
        g.set_state(gens[i].get_state())
        copies.append(g)
    return sample_randomness(copies)
