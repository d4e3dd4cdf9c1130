"""Bridge to diffusers' schedulers: run one with any network, and read the grid it steps on.

denoisekit samplers take a VE-frame start ``y`` and a grid of VE noise levels; a diffusers scheduler
holds its grid internally and steps a native sample. These helpers translate, so that the same start
noise and the same grid can be given to both (the parity tests and ``benchmarks/samplers.py`` do)::

    import diffusers
    from denoisekit import GaussianMixture, get_process
    from denoisekit.compat.diffusers import ddpm_config, run_scheduler, scheduler_sigmas
    from denoisekit.samplers import sample_dpmpp_2m

    process = get_process("ddpm")
    gm = GaussianMixture.random(dim=2)
    sched = diffusers.DPMSolverMultistepScheduler(**ddpm_config(process))
    sched.set_timesteps(10)
    sigmas = scheduler_sigmas(sched)                 # float64, VE frame, ends in 0
    y = torch.randn(64, 2, dtype=torch.float64) * (1 + sigmas[0] ** 2) ** 0.5
    theirs = run_scheduler(sched, gm.as_network(process, "eps"), y)
    ours = sample_dpmpp_2m(gm, y, sigmas)            # equal to float32 precision

Only the DDPM family (schedulers defined by ``alphas_cumprod``: x = alpha x0 + sigma eps with
alpha^2 + sigma^2 = 1) is covered. The scheduler's frame is recognised from ``init_noise_sigma``:
k-diffusion-style schedulers (Euler, Heun, LMS, ...) step the VE-frame ``y`` and scale the network
input themselves; DDIM-style ones (DDIM, PNDM, DPM-Solver, UniPC, DEIS) step the native ``x``.
diffusers is imported only when a function needs it.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from ..process import DiscreteDDPM

Net = Callable[[Tensor, Tensor], Tensor]


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("denoisekit.compat.diffusers needs the diffusers package: "
                          "pip install denoisekit[bench]") from err
    return diffusers


def _check_scheduler(scheduler: Any) -> None:
    diffusers = _require_diffusers()
    if not isinstance(scheduler, diffusers.SchedulerMixin):
        raise TypeError(f"expected a diffusers scheduler, got {type(scheduler).__name__}")
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod: only DDPM-family schedulers are supported")
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call scheduler.set_timesteps(...) first (or pass num_inference_steps)")


def ddpm_config(process: DiscreteDDPM) -> dict[str, Any]:
    """Scheduler keyword arguments that give diffusers the same discrete chain as ``process``.

    Pass them to every scheduler: their defaults differ (Heun and LMS default to Stable Diffusion's
    betas, DDIM to DDPM's).
    """
    if not isinstance(process, DiscreteDDPM):
        raise TypeError(f"diffusers' schedulers take a discrete DDPM chain, got {type(process).__name__}")
    if process.rescale_zero_snr:
        raise ValueError("pass rescale_betas_zero_snr=True to the schedulers that support it instead")
    return {"num_train_timesteps": process.num_steps, "beta_start": process.beta_start,
            "beta_end": process.beta_end, "beta_schedule": process.beta_schedule if process.beta_schedule != "cosine"
            else "squaredcos_cap_v2"}


def _sigma_of_alpha_bar(ab: Tensor | float) -> float:
    ab = float(ab)
    return math.sqrt((1.0 - ab) / ab)


def _ddim_chain(scheduler: Any) -> list[float]:
    """Grid of a scheduler that steps from timestep t to ``t - N // n`` (DDIM, PNDM), or ValueError
    if those steps do not chain into the next timestep it evaluates."""
    ac = scheduler.alphas_cumprod
    ts = torch.unique_consecutive(torch.as_tensor(scheduler.timesteps)).tolist()
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    out = []
    for i, t in enumerate(ts):
        out.append(_sigma_of_alpha_bar(ac[int(t)]))
        nxt = t - stride
        if i + 1 < len(ts) and nxt != ts[i + 1]:
            raise ValueError(f"{type(scheduler).__name__}'s step from timestep {t} lands on {nxt}, but it next "
                             f"evaluates the model at {ts[i + 1]}: its steps form no single grid (use "
                             f"timestep_spacing='leading' or 'trailing')")
    final = ac[int(ts[-1] - stride)] if ts[-1] - stride >= 0 else scheduler.final_alpha_cumprod
    return out + [_sigma_of_alpha_bar(final)]


def scheduler_sigmas(scheduler: Any) -> Tensor:
    """The VE-frame noise levels a configured scheduler steps through, as a float64 decreasing tensor.

    Entries are where the model is evaluated plus where the last step lands: 0 for most schedulers
    (``final_sigmas_type="zero"``, DDIM's ``set_alpha_to_one``), sigma_min for DEIS and for
    ``final_sigmas_type="sigma_min"``. Heun's repeated entries appear once. For singlestep DPM-Solver
    every evaluation point is listed (intermediate points included).

    These are the levels the scheduler's update formulas use. Some configurations give the model a
    different one: DPMSolverMultistep/Singlestep with karras, exponential or lu sigmas round (or
    truncate) the matching timestep, and Euler/Heun with fractional timesteps interpolate sigma
    linearly in t. A same-grid comparison is exact only where timesteps are integers or, as for
    Euler with karras sigmas, interpolated in log sigma like the DDPM process's clock.
    """
    _check_scheduler(scheduler)
    sig = getattr(scheduler, "sigmas", None)
    if isinstance(sig, Tensor):
        s = torch.unique_consecutive(sig.detach().to("cpu", torch.float64))
    else:
        s = torch.tensor(_ddim_chain(scheduler), dtype=torch.float64)
    if (s[1:] >= s[:-1]).any():
        raise ValueError(f"{type(scheduler).__name__}'s noise levels are not strictly decreasing: {s.tolist()}")
    return s


def _start_and_final_sigma(scheduler: Any) -> tuple[float, float]:
    sig = getattr(scheduler, "sigmas", None)
    if isinstance(sig, Tensor):
        return float(sig[0]), float(sig[-1])
    ts = torch.as_tensor(scheduler.timesteps)
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    last = int(ts[-1]) - stride
    final = scheduler.alphas_cumprod[last] if last >= 0 else scheduler.final_alpha_cumprod
    return _sigma_of_alpha_bar(scheduler.alphas_cumprod[int(ts[0])]), _sigma_of_alpha_bar(final)


def steps_in_ve_frame(scheduler: Any) -> bool:
    """True for k-diffusion-style schedulers, whose state is the VE-frame ``y`` (``init_noise_sigma > 1``)."""
    return float(scheduler.init_noise_sigma) != 1.0


def run_scheduler(scheduler: Any, net: Net, y: Tensor, *, num_inference_steps: int | None = None,
                  generator: torch.Generator | list[torch.Generator] | None = None,
                  noise: Sequence[Tensor] | None = None, frame: Literal["native", "ve"] = "native",
                  callback: Callable[[int, Tensor], None] | None = None, **step_kwargs: Any) -> Tensor:
    """Sample with a diffusers scheduler and ``net(x_native, timesteps (B,)) -> model output``.

    ``y`` is the VE-frame start at the scheduler's first noise level, as a denoisekit sampler takes it
    (``y = x_T / alpha_T``). ``net`` sees what a diffusers U-Net sees: ``scale_model_input`` of the state
    and the scheduler's timestep, expanded to the batch (e.g. ``gm.as_network(process, "eps")``).
    ``noise[i]`` is passed as ``variance_noise`` to step ``i`` of schedulers that accept it (SDE
    DPM-Solver++, DDIM with eta), so a run can use the same noise as a denoisekit sampler; otherwise
    ``generator`` is passed on. Returns the final sample: native (what a pipeline returns) or, with
    ``frame="ve"``, divided by alpha at the final noise level (comparable with denoisekit samplers).
    ``callback(i, state)`` sees the scheduler's own state after step ``i``; ``step_kwargs`` go to every
    ``scheduler.step`` call (e.g. DDIM's ``eta``).
    """
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    _check_scheduler(scheduler)
    if frame not in ("native", "ve"):
        raise ValueError(f"unknown frame {frame!r}; allowed: native, ve")
    ve = steps_in_ve_frame(scheduler)
    sigma0, sigma_final = _start_and_final_sigma(scheduler)
    sample = y if ve else y / math.sqrt(1.0 + sigma0**2)
    params = inspect.signature(scheduler.step).parameters
    if noise is not None and "variance_noise" not in params:
        raise ValueError(f"{type(scheduler).__name__}.step takes no variance_noise; pass a generator instead")
    timesteps = scheduler.timesteps
    if noise is not None and len(noise) < len(timesteps):
        raise ValueError(f"got {len(noise)} noise tensors for {len(timesteps)} scheduler steps")
    for i, t in enumerate(timesteps):
        out = net(scheduler.scale_model_input(sample, t), torch.as_tensor(t).expand(sample.shape[0]))
        kwargs: dict[str, Any] = dict(step_kwargs)
        if noise is not None:
            kwargs["variance_noise"] = noise[i]
        elif generator is not None and "generator" in params:
            kwargs["generator"] = generator
        sample = scheduler.step(out, t, sample, **kwargs).prev_sample
        if callback is not None:
            callback(i, sample)
    alpha_final = 1.0 / math.sqrt(1.0 + sigma_final**2)
    if ve:
        return sample * alpha_final if frame == "native" else sample
    return sample if frame == "native" else sample / alpha_final
