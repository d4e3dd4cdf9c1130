"""Sampler benchmark: endpoint error against the exact ODE solution, denoisekit vs diffusers, at equal NFE.

Setup (all float64, CPU):

- data: ``GaussianMixture.random(dim=2, components=8, seed=0)`` and ``(dim=16, components=8, seed=0)``;
- model: the mixture's exact denoiser as a DDPM eps-network (``gm.as_network``) on DDPM's 1000-step
  linear-beta chain (beta 1e-4..0.02), seen by denoisekit through ``Denoiser(net, process, "eps")``
  and by diffusers' schedulers through their own ``step`` (``denoisekit.compat.diffusers``);
- start: 512 native ``x_T = eps ~ N(0, I)`` (seed 1234), i.e. ``y = eps sqrt(1 + sigma_start^2)``;
- error: mean over the batch of ``||x_final - Phi(eps)||_2``, ``Phi(eps)`` the exact probability-flow
  ODE solution from ``x_T = eps`` at the process's sigma_max (t = 999) to 0 (dopri5, rtol = atol =
  1e-9): the sample the model defines. Schedules that start lower (leading spacing) start from the
  same native ``x_T = eps`` there, and their late start counts as error;
- NFE: model evaluations actually made (counted), at most the budget; a sampler whose step costs
  several evaluations takes fewer steps (Heun 2n-1, DPM-Solver-2 2n-1, DPM-Solver-3 3n-2, PNDM n+1).

denoisekit: every deterministic sampler x schedule (karras rho=7 and exponential on [sigma_min,
sigma_max] of the process; exponential is also the uniform log-SNR grid; trailing, linspace and
leading uniform-t spacings), plus grids from :func:`denoisekit.samplers.tuning.grid.optimize_sigmas` when that
module exists, tuned (mean L2 objective) on a separate batch of 4096 start noises (seed 99), never on
the evaluation batch. diffusers: each scheduler in every spacing / sigma family it offers; a table
reports its best.

Run ``python benchmarks/samplers.py`` (``--no-opt`` skips grid optimisation, ``--opt-all`` tunes
grids for five samplers instead of one, ``--quick`` uses 128 samples, a 1024-noise tuning batch and
NFE 5, 10). Prints markdown and rewrites the ``## Samplers`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable

import torch

from denoisekit import Denoiser, GaussianMixture, get_process
from denoisekit._utils import randn_like
from denoisekit.compat.diffusers import ddpm_config, run_scheduler, scheduler_sigmas
from denoisekit.samplers import (dpm_solver, sample_ddim, sample_dpm_solver_1, sample_dpm_solver_2,
                                 sample_dpm_solver_3, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2s,
                                 sample_dpmpp_3m, sample_euler, sample_heun, sample_unipc)
from denoisekit.schedules import get_sigmas, get_sigmas_exponential

from _common import RESULTS, write_section  # benchmarks/ is the script's folder

from denoisekit.samplers.tuning.grid import optimize_sigmas, tuning_batch
from denoisekit.samplers.tuning.solver import optimize_solver

import diffusers  # noqa: E402  (benchmark dependency: pip install denoisekit[bench])

ORACLES = {"2-D": {"dim": 2, "components": 8, "seed": 0}, "16-D": {"dim": 16, "components": 8, "seed": 0}}
EVAL_SEED, TUNE_SEED = 1234, 99
PROCESS = get_process("ddpm")
CFG = ddpm_config(PROCESS)
SCHEDULES = ("karras", "exponential", "trailing", "linspace", "leading")

#: label -> (function, options, registry name and options for the grid optimiser)
OURS: dict[str, tuple[Callable, dict[str, Any], str, dict[str, Any]]] = {
    "ddim (= euler, dpm_solver_1)": (sample_ddim, {}, "ddim", {}),
    "heun": (sample_heun, {}, "heun", {}),
    "dpm_solver_2": (sample_dpm_solver_2, {}, "dpm_solver_2", {}),
    "dpm_solver_3": (sample_dpm_solver_3, {}, "dpm_solver_3", {}),
    "dpmpp_2s": (sample_dpmpp_2s, {}, "dpmpp_2s", {}),
    "dpmpp_2m": (sample_dpmpp_2m, {}, "dpmpp_2m", {}),
    "dpmpp_3m": (sample_dpmpp_3m, {}, "dpmpp_3m", {}),
    "unipc bh1 p=2": (sample_unipc, {"variant": "bh1", "order": 2}, "unipc_bh1", {"order": 2}),
    "unipc bh1 p=3": (sample_unipc, {"variant": "bh1", "order": 3}, "unipc_bh1", {"order": 3}),
    "unipc bh2 p=2": (sample_unipc, {"variant": "bh2", "order": 2}, "unipc_bh2", {"order": 2}),
    "unipc bh2 p=3": (sample_unipc, {"variant": "bh2", "order": 3}, "unipc_bh2", {"order": 3}),
}
#: samplers whose grids are optimised: the best one on a separate validation batch (one tuning costs
#: 10-60 s here); ``--opt-all`` adds the others that were tried
OPTIMISED = ("unipc bh2 p=3",)
OPTIMISED_ALL = ("dpmpp_2m", "dpmpp_3m", "unipc bh1 p=3", "unipc bh2 p=2", "unipc bh2 p=3")
OPT_NFES = (5, 10)
#: the config label of learned solvers (solver_opt: grid and multistep weights fitted together)
LEARNED = "learned grid + weights"
TUNED = ("optimised", LEARNED)
TUNE_N, TUNE_EVAL = 4096, 1024


def diffusers_configs() -> list[tuple[str, str, Callable[[], Any]]]:
    """(scheduler, configuration, factory): every spacing and sigma family each scheduler offers."""
    d = diffusers
    spacings = [(f"{s} spacing", {"timestep_spacing": s}) for s in ("linspace", "leading", "trailing")]
    families = [("karras", {"use_karras_sigmas": True}), ("exponential", {"use_exponential_sigmas": True}),
                ("beta", {"use_beta_sigmas": True})]
    plan: list[tuple[str, Any, dict[str, Any], list[tuple[str, dict[str, Any]]]]] = [
        ("DDIM", d.DDIMScheduler, {"clip_sample": False}, spacings),
        ("PNDM (PLMS)", d.PNDMScheduler, {"skip_prk_steps": True}, spacings),
        ("Euler", d.EulerDiscreteScheduler, {}, spacings + families),
        ("Heun", d.HeunDiscreteScheduler, {}, spacings + families),
        ("LMS", d.LMSDiscreteScheduler, {}, spacings + families),
        ("DEIS p=2", d.DEISMultistepScheduler, {"solver_order": 2}, spacings + families),
        ("DEIS p=3", d.DEISMultistepScheduler, {"solver_order": 3}, spacings + families),
        ("DPMSolverMultistep p=2", d.DPMSolverMultistepScheduler, {"solver_order": 2},
         spacings + families + [("lu lambdas", {"use_lu_lambdas": True})]),
        ("DPMSolverMultistep p=3", d.DPMSolverMultistepScheduler, {"solver_order": 3},
         spacings + families + [("lu lambdas", {"use_lu_lambdas": True})]),
        ("DPMSolverSinglestep p=2", d.DPMSolverSinglestepScheduler, {"solver_order": 2},
         [("default", {})] + families),
        ("DPMSolverSinglestep p=3", d.DPMSolverSinglestepScheduler, {"solver_order": 3},
         [("default", {})] + families),
    ]
    for variant in ("bh1", "bh2"):
        for order in (2, 3):
            # bh1 with the default final_sigmas_type="zero" returns NaN in diffusers 0.42 (B(h) = -inf
            # times a zero correction on the step to 0), so both final types are tried
            finals = [("", {})] + [(", final sigma_min", {"final_sigmas_type": "sigma_min"})]
            plan.append((f"UniPC {variant} p={order}", d.UniPCMultistepScheduler,
                         {"solver_type": variant, "solver_order": order},
                         [(a + b, {**ca, **cb}) for a, ca in spacings + families for b, cb in finals]))
    out = []
    for name, cls, base, variants in plan:
        for label, extra in variants:
            out.append((name, label, lambda cls=cls, kw={**CFG, **base, **extra}: cls(**kw)))
    return out


class Counted:
    """Wrap a callable and count its calls (the honest NFE)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any) -> torch.Tensor:
        self.calls += 1
        return self.fn(*args)


def _zero_denoiser(y: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
    return torch.zeros_like(y)


def steps_for(fn: Callable, options: dict[str, Any], nfe: int, schedule: str) -> int:
    """The most steps of ``schedule`` whose run costs at most ``nfe`` evaluations."""
    for steps in range(nfe, 0, -1):
        counter = Counted(_zero_denoiser)
        fn(counter, torch.ones(1, 1, dtype=torch.float64), get_sigmas(PROCESS, schedule, steps), **options)
        if counter.calls <= nfe:
            return steps
    raise ValueError(f"no grid of {schedule} fits in {nfe} evaluations")


def diffusers_steps(factory: Callable[[], Any], nfe: int) -> Any | None:
    """A scheduler set to the most inference steps whose run makes at most ``nfe`` model calls."""
    for steps in range(nfe, 0, -1):
        sched = factory()
        try:
            sched.set_timesteps(steps)
        except Exception:  # some configurations reject some step counts
            continue
        if len(sched.timesteps) <= nfe:
            return sched
    return None


class Reference:
    """The exact sample each start noise defines: the ODE solution from the process's prior level.

    A sampler that starts lower (leading spacing starts at t = N - N/n) gets the same native
    ``x_T = eps`` there, ``y = eps sqrt(1 + sigma_start^2)``, and is compared with the same endpoint:
    starting late is part of its error (in 16-D, starting at t=800 instead of 999 alone moves the
    exact endpoint by 0.19 on average, as much as a 10-NFE sampler's error).
    """

    def __init__(self, gm: GaussianMixture, eps: torch.Tensor) -> None:
        self.eps = eps
        sigma_max = PROCESS.sigma_max
        self.endpoint = gm.ode_solution(self.start(sigma_max), sigma_max, 0.0, rtol=1e-9, atol=1e-9)

    def start(self, sigma: float) -> torch.Tensor:
        return self.eps * math.sqrt(1.0 + sigma**2)


def error(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Mean L2 endpoint error over the batch, its standard error and the median (errors are heavy-tailed)."""
    per = (x.to(torch.float64) - ref).norm(dim=1)
    err = per.mean().item()
    if not math.isfinite(err):
        return {"err": math.inf, "se": math.inf, "median": math.inf}
    return {"err": err, "se": per.std().item() / math.sqrt(per.numel()), "median": per.median().item()}


def run_ours(gm: GaussianMixture, ref: Reference, nfes: tuple[int, ...], optimised: tuple[str, ...], tune_n: int,
             log: Callable[[str], None], learned: bool = True) -> list[dict[str, Any]]:
    denoiser = Denoiser(gm.as_network(PROCESS, "eps"), PROCESS, "eps")
    rows = []
    batch = None
    if optimised or learned:  # one tuning batch (noises, exact endpoints) for every tuning
        t0 = time.time()
        batch = tuning_batch(denoiser, sigma_max=PROCESS.sigma_max, shape=(gm.dim,), n_samples=tune_n,
                             generator=torch.Generator().manual_seed(TUNE_SEED), process=PROCESS)
        log(f"  tuning batch of {tune_n} in {time.time() - t0:.1f}s")
    for label, (fn, options, reg_name, reg_options) in OURS.items():
        for nfe in nfes:
            for schedule in SCHEDULES:
                steps = steps_for(fn, options, nfe, schedule)
                sigmas = get_sigmas(PROCESS, schedule, steps)
                counted = Counted(denoiser)
                out = fn(counted, ref.start(float(sigmas[0])), sigmas, **options)
                rows.append({"lib": "denoisekit", "method": label, "config": schedule, "nfe": counted.calls,
                             "budget": nfe, **error(out, ref.endpoint)})
            if batch is not None and label in optimised and nfe in OPT_NFES:
                t0 = time.time()
                sigmas = optimize_sigmas(denoiser, reg_name, nfe, sigma_min=PROCESS.sigma_min,
                                         sigma_max=PROCESS.sigma_max, batch=batch, n_eval=min(TUNE_EVAL, tune_n),
                                         sampler_options=reg_options)
                seconds = time.time() - t0
                counted = Counted(denoiser)
                out = fn(counted, ref.start(float(sigmas[0])), sigmas, **options)
                rows.append({"lib": "denoisekit", "method": label, "config": "optimised", "nfe": counted.calls,
                             "budget": nfe, **error(out, ref.endpoint), "grid": sigmas.tolist(), "seconds": seconds})
                log(f"  optimised {label} @ {nfe} NFE in {seconds:.1f}s: {rows[-1]['err']:.4g}")
    for nfe in OPT_NFES if batch is not None and learned else ():
        t0 = time.time()
        solver = optimize_solver(denoiser, nfe, sigma_min=PROCESS.sigma_min, sigma_max=PROCESS.sigma_max, batch=batch)
        seconds = time.time() - t0
        counted = Counted(denoiser)
        out = solver.sample(counted, ref.start(float(solver.sigmas[0])))
        rows.append({"lib": "denoisekit", "method": "learned multistep", "config": LEARNED, "nfe": counted.calls,
                     "budget": nfe, **error(out, ref.endpoint), "grid": solver.sigmas.tolist(),
                     "weights": [w.tolist() for w in solver.weights], "seconds": seconds})
        log(f"  learned solver @ {nfe} NFE in {seconds:.1f}s: {rows[-1]['err']:.4g}")
    return rows


def run_diffusers(gm: GaussianMixture, ref: Reference, nfes: tuple[int, ...]) -> list[dict[str, Any]]:
    net = gm.as_network(PROCESS, "eps")
    rows = []
    for name, label, factory in diffusers_configs():
        for nfe in nfes:
            sched = diffusers_steps(factory, nfe)
            if sched is None:
                continue
            counted = Counted(net)
            y = ref.start(_start_sigma(sched))
            config = label
            try:
                stats = error(run_scheduler(sched, counted, y), ref.endpoint)
            except Exception as exc:  # report, do not stop: a failing configuration is a result too
                stats = {"err": math.inf, "se": math.inf, "median": math.inf}
                config = f"{label} ({type(exc).__name__})"
            rows.append({"lib": "diffusers", "method": name, "config": config, "nfe": counted.calls,
                         "budget": nfe, **stats})
    return rows


def _start_sigma(sched: Any) -> float:
    sig = getattr(sched, "sigmas", None)
    if isinstance(sig, torch.Tensor):
        return float(sig[0])
    ab = float(sched.alphas_cumprod[int(sched.timesteps[0])])
    return math.sqrt((1 - ab) / ab)


# ---------------------------------------------------------------- parity: same grid, same start


@contextmanager
def _reference_code_d2_weight():
    """Temporarily weigh the third-order D2 term as the DPM-Solver code and diffusers do (g_2, not
    2 g_2): used only to show that this single weight is the whole difference."""
    g = dpm_solver._g
    dpm_solver._g = lambda k, big_h: g(k, big_h) / 2 if k == 2 else g(k, big_h)
    try:
        yield
    finally:
        dpm_solver._g = g


def _groupwise(sampler: Callable, final: Callable, gm: GaussianMixture, y: torch.Tensor,
               sigmas: torch.Tensor) -> torch.Tensor:
    """Our singlestep sampler on diffusers' singlestep grid (odd count): groups (s[2j], s[2j+1], s[2j+2])
    are our steps with r1 the lambda-fraction of the middle point; the last step is first order."""
    s = sigmas.tolist()
    n = len(s) - 1
    for j in range(n // 2):
        a, m, b = s[2 * j], s[2 * j + 1], s[2 * j + 2]
        y = sampler(gm, y, torch.tensor([a, b], dtype=torch.float64), r1=math.log(a / m) / math.log(a / b))
    return final(gm, y, torch.tensor(s[n - 1:], dtype=torch.float64))


def parity(gm: GaussianMixture) -> list[tuple[str, float]]:
    """Max abs difference of final samples, diffusers vs denoisekit, on the scheduler's own grid."""
    d = diffusers
    eps = torch.randn(64, gm.dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    net = gm.as_network(PROCESS, "eps")

    def pair(sched: Any, steps: int, ours: Callable, noise_seed: int | None = None, **opts: Any) -> float:
        sched.set_timesteps(steps)
        sigmas = scheduler_sigmas(sched)
        y = eps * math.sqrt(1 + float(sigmas[0]) ** 2)
        noise = None
        if noise_seed is not None:
            g = torch.Generator().manual_seed(noise_seed)
            noise = [randn_like(y, g) for _ in range(len(sigmas) - 2)] + [torch.zeros_like(y)]
            opts["generator"] = torch.Generator().manual_seed(noise_seed)
        theirs = run_scheduler(sched, net, y, frame="ve", noise=noise,
                               **({"eta": opts.pop("ddim_eta")} if "ddim_eta" in opts else {}))
        return (theirs - ours(gm, y, sigmas, **opts)).abs().max().item()

    out = [
        ("DDIM (leading) / sample_ddim", pair(d.DDIMScheduler(**CFG, clip_sample=False), 10, sample_ddim)),
        ("DDIM eta=1 (trailing, equal noise) / sample_ddim eta=1",
         pair(d.DDIMScheduler(**CFG, clip_sample=False, timestep_spacing="trailing"), 10, sample_ddim,
              noise_seed=5, eta=1.0, ddim_eta=1.0)),
        ("DPMSolverMultistep p=2 / dpmpp_2m", pair(d.DPMSolverMultistepScheduler(**CFG), 10, sample_dpmpp_2m)),
        ("DPMSolverMultistep p=2 heun / dpmpp_2m_sde eta=0 heun",
         pair(d.DPMSolverMultistepScheduler(**CFG, solver_type="heun"), 10, sample_dpmpp_2m_sde, eta=0.0,
              solver_type="heun")),
        ("SDE-DPMSolverMultistep p=2 (equal noise) / dpmpp_2m_sde",
         pair(d.DPMSolverMultistepScheduler(**CFG, algorithm_type="sde-dpmsolver++"), 12, sample_dpmpp_2m_sde,
              noise_seed=11)),
        ("DPMSolverMultistep p=3 / dpmpp_3m (as shipped: D2 weight differs)",
         pair(d.DPMSolverMultistepScheduler(**CFG, solver_order=3), 10, sample_dpmpp_3m)),
    ]
    with _reference_code_d2_weight():
        out.append(("DPMSolverMultistep p=3 / dpmpp_3m with D2 weight g_2 (reference code's)",
                    pair(d.DPMSolverMultistepScheduler(**CFG, solver_order=3), 10, sample_dpmpp_3m)))
    for variant in ("bh1", "bh2"):
        for order in (2, 3):
            out.append((f"UniPC {variant} p={order} (final sigma_min) / sample_unipc",
                        pair(d.UniPCMultistepScheduler(**CFG, solver_type=variant, solver_order=order,
                                                       final_sigmas_type="sigma_min"), 10, sample_unipc,
                             variant=variant, order=order)))
    out.append(("UniPC bh2 p=3 (final 0) / sample_unipc",
                pair(d.UniPCMultistepScheduler(**CFG, solver_order=3), 10, sample_unipc, variant="bh2", order=3)))
    out += [
        ("Euler (trailing) / sample_euler",
         pair(d.EulerDiscreteScheduler(**CFG, timestep_spacing="trailing"), 10, sample_euler)),
        ("Euler (karras) / sample_euler", pair(d.EulerDiscreteScheduler(**CFG, use_karras_sigmas=True), 10,
                                               sample_euler)),
        ("Heun (trailing) / sample_heun", pair(d.HeunDiscreteScheduler(**CFG, timestep_spacing="trailing"), 6,
                                               sample_heun)),
        ("DPMSolverSinglestep p=2 / dpmpp_2s per group",
         pair(d.DPMSolverSinglestepScheduler(**CFG), 9,
              lambda g, y, s: _groupwise(sample_dpmpp_2s, sample_dpmpp_2s, g, y, s))),
        ("DPMSolverSinglestep p=2 dpmsolver / dpm_solver_2 per group",
         pair(d.DPMSolverSinglestepScheduler(**CFG, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 9,
              lambda g, y, s: _groupwise(sample_dpm_solver_2, sample_dpm_solver_1, g, y, s))),
    ]
    return out


def order_check(gm: GaussianMixture) -> list[tuple[str, list[float], float]]:
    """Convergence of the third-order multistep update with the Taylor D2 weight (ours) and with the
    reference code's weight (diffusers' DPMSolverMultistep p=3, equal to it by the parity table), on
    exponential grids from sigma 20 to 0.05 (no step to 0, no lower-order final steps)."""
    y = gm.prior_noise(128, 20.0, torch.Generator().manual_seed(3))
    exact = gm.ode_solution(y, 20.0, 0.05, rtol=1e-11, atol=1e-11)
    rows = []
    for name, fn, options, patched in [
        ("dpmpp_3m (Taylor weight 2 g_2)", sample_dpmpp_3m, {}, False),
        ("dpmpp_3m with the reference code's weight g_2 (= diffusers)", sample_dpmpp_3m, {}, True),
        ("UniP-3 (unipc bh2 p=3, corrector off)", sample_unipc, {"order": 3, "corrector": False}, False),
        ("UniPC bh2 p=3", sample_unipc, {"order": 3}, False),
    ]:
        errs = []
        for steps in (32, 64, 128):
            sigmas = get_sigmas_exponential(steps, 0.05, 20.0)[:-1]
            with (_reference_code_d2_weight() if patched else nullcontext()):
                out = fn(gm, y, sigmas, lower_order_final=False, **options)
            errs.append((out - exact).norm(dim=1).mean().item())
        rows.append((name, errs, (math.log2(errs[0]) - math.log2(errs[-1])) / 2))
    return rows


# ---------------------------------------------------------------- report

NOTES = [
    "Notes (what the numbers rest on):",
    "",
    "- Same algorithm, same grid, same model gives the same result in both libraries (parity table below, "
    "~1e-6 = float32). So on a standard grid denoisekit cannot beat diffusers' version of the same method; "
    "any gain comes from the grid (continuous-time levels, optimised grids) or from a different method.",
    "- diffusers' best configurations are often UniPC with leading spacing and `final_sigmas_type=\"sigma_min\"` "
    "(its last evaluation only corrects the previous step; the result keeps noise sigma_min = 0.01) and DEIS "
    "p=3 with exponential sigmas (Adams-Bashforth in log-rho; its model calls use truncated integer "
    "timesteps, not the grid's levels).",
    "- The errors are heavy-tailed (compare the mean and median columns): at 5-10 NFE a few trajectories end in "
    "a different mixture component (errors of 3-6 where the median is ~0.04 at 16-D, 10 NFE) and those few "
    "dominate the mean. `schedule_opt` therefore minimises the mean L2 distance itself (a squared error "
    "weighs the outliers further: its earlier version, squared error on 256 tuning noises, reached a tuning "
    "error several times below its evaluation error), on 4096 tuning noises whose loss is estimated by "
    "stratified sampling (the 512 noises hardest for the scanned grids always, 512 of the others standing "
    "for all of them), searching from 3 distinct starting grids. Those choices were made on a separate "
    "validation batch (4096 noises, seed 4242), never on the evaluation batch; only UniPC bh2 p=3, the best "
    "there on average (bh2 p=2 within a few percent, dpmpp_3m clearly worse), is tuned by default "
    "(`--opt-all` tunes four more).",
    "- How the target is met, and how firmly: by the learned solvers (`solver_opt`: grid and multistep weights "
    "fitted together on the tuning batch). At 5 NFE in 16-D no grid alone halves diffusers' error (the optimised "
    "UniPC grid: 0.36 against 0.49): the error there is not in the tail but in the typical sample (median ~0.2), "
    "because the last evaluation, at sigma ~0.2, becomes the sample and the mixture's narrowest directions "
    "(std ~0.05) are lost in that jump. Weights that extrapolate the data prediction from all earlier evaluations "
    "recover them: the median falls to 0.056 and the mean to 0.21 (ratio 0.43). At 16-D, 10 NFE the learned "
    "solver and the optimised UniPC grid are close (0.083 and 0.087; ratios 0.46 and 0.48). The 16-D ratios are "
    "within 1.5 standard errors of 0.5 (see the ± columns): the target is met on this evaluation batch, not by a "
    "wide margin; at 2-D it is (0.16 and 0.39). Grids alone: the optimised grids win by moving evaluations to "
    "where trajectories choose their component, so fewer of them switch; with 1024 tuning noises (`--quick`, "
    "which also evaluates on 128 only) the learned solvers' ratios were 0.15, 0.29, 0.44 and 0.41.",
    "- diffusers' third-order multistep DPM-Solver++ weighs its second divided difference by g_2 instead of "
    "2 g_2 (order 2 in the convergence table below; denoisekit's dpmpp_3m equals it when that weight is "
    "patched), UniPC bh1 with `final_sigmas_type=\"zero\"` returns NaN, and DDIM defaults to "
    "`clip_sample=True` (switched off here: it clips the oracle's x0).",
]


def _fmt(err: float) -> str:
    return "fail (NaN/inf)" if not math.isfinite(err) else f"{err:.4g}"


def _fmt_se(r: dict[str, Any]) -> str:
    return _fmt(r["err"]) + (f" ± {r['se']:.2g}" if math.isfinite(r["err"]) else "")


def best_by(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """For each value of ``key``, the row with the smallest error."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r[key] not in best or r["err"] < best[r[key]]["err"]:
            best[r[key]] = r
    return sorted(best.values(), key=lambda r: r["err"])


def report(results: dict[str, list[dict[str, Any]]], nfes: tuple[int, ...], parities: dict[str, list],
           orders: list, meta: str) -> str:
    lines = ["## Samplers", "", meta, ""]
    summary = ["| oracle | NFE | denoisekit best, standard schedules | error | denoisekit best incl. tuned solvers "
               "| error | diffusers best | error | ratio (std) | ratio (opt) |", "|---" * 10 + "|"]
    tables, verdicts = [], []
    for oracle, rows in results.items():
        for nfe in nfes:
            here = [r for r in rows if r["budget"] == nfe]
            ours_std = [r for r in here if r["lib"] == "denoisekit" and r["config"] not in TUNED]
            ours_all = [r for r in here if r["lib"] == "denoisekit"]
            theirs = [r for r in here if r["lib"] == "diffusers"]
            b_std, b_all, b_th = (min(x, key=lambda r: r["err"]) for x in (ours_std, ours_all, theirs))
            r_std, r_all = b_std["err"] / b_th["err"], b_all["err"] / b_th["err"]
            summary.append(f"| {oracle} | {nfe} | {b_std['method']} / {b_std['config']} | {_fmt_se(b_std)} | "
                           f"{b_all['method']} / {b_all['config']} | {_fmt_se(b_all)} | "
                           f"{b_th['method']} / {b_th['config']} | {_fmt_se(b_th)} | {r_std:.2f} | {r_all:.2f} |")
            if nfe in (5, 10):
                verdicts.append(f"{oracle} at {nfe} NFE: ratio {r_all:.2f} "
                                f"({'met' if r_all <= 0.5 else 'missed'})")
            tab = [f"#### {oracle}, NFE {nfe}", "",
                   "| library | sampler | best schedule / config | NFE used | mean error | median |",
                   "|---|---|---|---|---|---|"]
            for r in best_by(ours_all, "method")[:6] + best_by(theirs, "method"):
                tab.append(f"| {r['lib']} | {r['method']} | {r['config']} | {r['nfe']} | {_fmt_se(r)} | "
                           f"{_fmt(r['median'])} |")
            tables += tab + [""]
    lines += ["### Summary: best of each library at equal NFE", "",
              "Ratio = denoisekit error / diffusers error (target from the issue: <= 0.5 at 5 and 10 NFE). "
              "\"std\": denoisekit restricted to the standard schedule families; \"opt\": including grids "
              "optimised per sampler and NFE by `schedule_opt` and solvers learned by `solver_opt` (grid and "
              "multistep weights), both on a separate tuning batch. Errors are "
              "mean ± standard error over the evaluation batch.", ""]
    lines += summary + ["", "Target (<= 0.5 with the best denoisekit solver): " + "; ".join(verdicts) + ".", "",
                        *NOTES, "", "### Per oracle and NFE: each sampler at its best schedule", "",
                        "denoisekit: the six best samplers; diffusers: every scheduler at its best configuration "
                        "(spacing / sigma family). NFE used can be below the budget for multi-evaluation steps.",
                        ""] + tables
    tuned = [(oracle, r) for oracle, rows in results.items() for r in rows if r["config"] == "optimised"]
    learned = [(oracle, r) for oracle, rows in results.items() for r in rows if r["config"] == LEARNED]
    if tuned:
        lines += ["### Optimised grids", "",
                  "The grids `schedule_opt` chose (sigma levels in the VE frame, ending with the jump to 0) and the "
                  "tuning time (shared tuning batch excluded). A second level close to sigma_max is not a bug: "
                  "the loss is nearly flat in it (in a validation check at 16-D, 10 NFE, moving it anywhere "
                  "between 120 and 157 changed the error by 0.2%), so the search leaves it near its start.", "",
                  "| oracle | sampler | NFE | grid | tuning (s) | error |", "|---|---|---|---|---|---|"]
        for oracle, r in tuned:
            grid = ", ".join(f"{v:.4g}" for v in r["grid"])
            lines.append(f"| {oracle} | {r['method']} | {r['budget']} | {grid} | {r['seconds']:.0f} | {_fmt_se(r)} |")
        lines.append("")
    if learned:
        lines += ["### Learned solvers", "",
                  "`solver_opt.optimize_solver` (defaults: DPM-Solver++(2M) on its `optimize_sigmas` grid as the start, "
                  "600 Adam steps on 1024-noise mini-batches of the tuning batch, cosine learning rate from 1e-2): "
                  "the grid and the weights w_ij of the multistep update x' = (s'/s) x + (1 - s'/s) [D_i + sum_j w_ij "
                  "(D_j - D_i)] (row i: weights on the earlier evaluations 0..i-1; DPM-Solver++(2M) has only "
                  "w_i,i-1 = -h_i / (2 h_i-1)). Tuning time includes the start grid's search.", "",
                  "| oracle | NFE | grid | weights | tuning (s) | error |", "|---|---|---|---|---|---|"]
        for oracle, r in learned:
            grid = ", ".join(f"{v:.4g}" for v in r["grid"])
            weights = "; ".join("[" + ", ".join(f"{v:.3f}" for v in w) + "]" for w in r["weights"][1:])
            lines.append(f"| {oracle} | {r['budget']} | {grid} | {weights} | {r['seconds']:.0f} | {_fmt_se(r)} |")
        lines.append("")
    lines += ["### Full grid: denoisekit sampler x schedule (error; NFE budget in the header)", ""]
    for oracle, rows in results.items():
        configs = list(SCHEDULES) + (["optimised"] if any(r["config"] == "optimised" for r in rows) else [])
        lines += [f"#### {oracle}", "", "| sampler | NFE | " + " | ".join(configs) + " |",
                  "|---|---|" + "---|" * len(configs)]
        for label in OURS:
            for nfe in nfes:
                cell = {r["config"]: r for r in rows if r["lib"] == "denoisekit" and r["method"] == label
                        and r["budget"] == nfe}
                vals = [(_fmt(cell[c]["err"]) + (f" ({cell[c]['nfe']})" if cell[c]["nfe"] != nfe else ""))
                        if c in cell else "" for c in configs]
                lines.append(f"| {label} | {nfe} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["### Parity: diffusers scheduler vs denoisekit sampler on the scheduler's own grid", "",
              "Same model, same start, same grid read with `scheduler_sigmas`; 64 samples, max abs difference of "
              "the final samples (VE frame). diffusers keeps grids and coefficients in float32, so ~1e-6 is "
              "agreement.", "", "| pair | " + " | ".join(parities) + " |", "|---|" + "---|" * len(parities)]
    names = [n for n, _ in next(iter(parities.values()))]
    for i, n in enumerate(names):
        lines.append(f"| {n} | " + " | ".join(f"{parities[o][i][1]:.2g}" for o in parities) + " |")
    lines += ["", "### Convergence order of the third-order multistep update", "",
              "2-D oracle, 128 starts at sigma 20, exponential grids to sigma 0.05 (no step to 0, full order to the "
              "end), error against the exact ODE solution.", "",
              "| method | error at 32 / 64 / 128 steps | fitted order |", "|---|---|---|"]
    for name, errs, slope in orders:
        lines.append(f"| {name} | {' / '.join(f'{e:.3g}' for e in errs)} | {slope:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-opt", action="store_true", help="skip tuned grids (schedule_opt) and learned solvers (solver_opt)")
    parser.add_argument("--opt-all", action="store_true", help="tune grids for five samplers, not one (slow)")
    parser.add_argument("--quick", action="store_true", help="128 samples, 1024 tuning noises, NFE 5 and 10")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is faster and leaves the other core free
    nfes = (5, 10) if args.quick else (5, 10, 20, 50)
    batch, tune_n = (128, 1024) if args.quick else (512, TUNE_N)
    optimised = () if args.no_opt else OPTIMISED_ALL if args.opt_all else OPTIMISED
    t0 = time.time()
    results, parities, orders = {}, {}, []
    for oracle, spec in ORACLES.items():
        gm = GaussianMixture.random(**spec)
        eps = torch.randn(batch, gm.dim, generator=torch.Generator().manual_seed(EVAL_SEED), dtype=torch.float64)
        ref = Reference(gm, eps)
        print(f"{oracle}: denoisekit ...", flush=True)
        rows = run_ours(gm, ref, nfes, optimised, tune_n, lambda s: print(s, flush=True), learned=not args.no_opt)
        print(f"{oracle}: diffusers ... ({time.time() - t0:.0f}s)", flush=True)
        rows += run_diffusers(gm, ref, nfes)
        results[oracle] = rows
        print(f"{oracle}: parity ... ({time.time() - t0:.0f}s)", flush=True)
        parities[oracle] = parity(gm)
        if oracle == "2-D":
            orders = order_check(gm)
        print(f"{oracle}: done ({time.time() - t0:.0f}s)", flush=True)
    opt = "none (--no-opt)" if not optimised else \
        (f"schedule_opt.optimize_sigmas (defaults: mean L2 objective, stratified estimate on "
         f"{min(TUNE_EVAL, tune_n)} of the tuning noises per evaluation, 3 restarts) for {', '.join(optimised)} "
         f"at NFE {', '.join(map(str, OPT_NFES))}")
    flags = "".join(f" --{name}" for name, on in (("quick", args.quick), ("no-opt", args.no_opt),
                                                   ("opt-all", args.opt_all)) if on)
    meta = (f"Produced by `python benchmarks/samplers.py{flags}` "
            f"(torch {torch.__version__}, diffusers {diffusers.__version__}, {time.time() - t0:.0f} s on CPU). "
            f"Oracles: `GaussianMixture.random(dim=2, components=8, seed=0)` and `(dim=16, components=8, seed=0)`; "
            f"DDPM linear-beta eps model; {batch} start noises x_T = eps (seed {EVAL_SEED}); error = mean L2 distance "
            f"of the final sample to the exact PF-ODE solution from the same x_T at the process's sigma_max (t = 999), "
            f"so a schedule that starts lower pays for it. Optimised grids: {opt}, tuned on "
            f"{tune_n} other start noises (seed {TUNE_SEED}) and their exact endpoints, never on the evaluation batch.")
    text = report(results, nfes, parities, orders, meta)
    print(text)
    if not args.no_write:
        write_section(text, "## Samplers")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
