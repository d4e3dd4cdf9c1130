"""Samplers: pure functions ``sample_<name>(denoiser, x, sigmas, *, generator, callback, **options)``.

``x`` is the VE-frame start point at ``sigmas[0]``; ``sigmas`` decreases (usually to 0). The
:data:`SAMPLERS` registry maps CLI/config names to ``(function, default options)``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from torch import Tensor

from .._utils import lookup
from .adaptive import sample_ode, solve_pf_ode
from .consistency import sample_consistency
from .ddim import sample_ddim, sample_ddim_inversion, sample_ddpm, sample_euler, sample_euler_ancestral
from .dpm_solver import (sample_dpm_solver_1, sample_dpm_solver_2, sample_dpm_solver_3, sample_dpmpp_2m,
                         sample_dpmpp_2m_sde, sample_dpmpp_2s, sample_dpmpp_3m, sample_dpmpp_3m_sde)
from .flow import sample_flow, sample_flow_euler, sample_flow_heun, sample_flow_rk4
from .heun import sample_heun
from .meanflow import sample_meanflow
from .multistep import sample_multistep
from .pc import sample_pc
from .unipc import sample_unipc

SAMPLERS: dict[str, tuple[Callable[..., Tensor], dict[str, Any]]] = {
    "ddpm": (sample_ddpm, {"variance": "small"}),
    "ddpm_large": (sample_ddpm, {"variance": "large"}),
    "ddim": (sample_ddim, {"eta": 0.0}),
    "euler": (sample_euler, {}),
    "euler_ancestral": (sample_euler_ancestral, {"eta": 1.0}),
    "heun": (sample_heun, {}),
    "heun_sde": (sample_heun, {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}),
    "dpm_solver_1": (sample_dpm_solver_1, {}),
    "dpm_solver_2": (sample_dpm_solver_2, {}),
    "dpm_solver_3": (sample_dpm_solver_3, {}),
    "dpmpp_2s": (sample_dpmpp_2s, {}),
    "dpmpp_2m": (sample_dpmpp_2m, {}),
    "dpmpp_3m": (sample_dpmpp_3m, {}),
    "dpmpp_2m_sde": (sample_dpmpp_2m_sde, {}),
    "dpmpp_3m_sde": (sample_dpmpp_3m_sde, {}),
    "unipc_bh1": (sample_unipc, {"variant": "bh1"}),
    "unipc_bh2": (sample_unipc, {"variant": "bh2"}),
    "multistep": (sample_multistep, {}),
    "pc": (sample_pc, {}),
    "flow_euler": (sample_flow_euler, {}),
    "flow_heun": (sample_flow_heun, {}),
    "flow_rk4": (sample_flow_rk4, {}),
    "ode": (sample_ode, {}),
    "consistency": (sample_consistency, {}),
    "meanflow": (sample_meanflow, {}),
}

#: Samplers that add fresh noise (their output is a sample, not the ODE solution).
STOCHASTIC = frozenset({"ddpm", "ddpm_large", "euler_ancestral", "heun_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "pc",
                       "consistency"})


def get_sampler(name: str, **options: Any) -> Callable[..., Tensor]:
    """The sampler registered as ``name`` with its defaults, overridden by ``options``."""
    fn, defaults = lookup("sampler", SAMPLERS, name)
    return partial(fn, **{**defaults, **options})


__all__ = [
    "SAMPLERS", "STOCHASTIC", "get_sampler", "solve_pf_ode", "sample_ode", "sample_ddim", "sample_ddim_inversion",
    "sample_ddpm", "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_pc", "sample_flow",
    "sample_flow_euler", "sample_flow_heun", "sample_flow_rk4", "sample_dpm_solver_1", "sample_dpm_solver_2",
    "sample_dpm_solver_3", "sample_dpmpp_2s", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde", "sample_unipc", "sample_multistep", "sample_consistency", "sample_meanflow",
]
