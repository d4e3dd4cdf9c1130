"""MeanFlow sampling (Geng et al. 2025, "Mean Flows for One-step Generative Modeling", Algorithm 2).

A MeanFlow network predicts the average velocity ``u(z_t, r, t) = 1 / (t - r) int_r^t v(z_s, s) ds`` of a
rectified flow, so one evaluation jumps exactly from ``t`` to any ``r < t``: ``z_r = z_t - (t - r) u(z_t, r, t)``.
One step from the prior to 0 is a sample (1-NFE); more steps chain jumps over any grid (by default uniform in
``t``, as for every flow), each step one evaluation, so one trained model serves every step count.

Through the denoiser contract the jump is a DDIM step: the MeanFlow run's
:class:`~denoisekit.prediction.Denoiser` called with ``sigma_to`` returns ``x0_hat = z_t - t u(z_t, r, t)``, the
estimate whose DDIM step ``y' = x0 + sigma' (y - x0) / sigma`` to ``sigma_to`` lands on ``z_r``
(tests/test_meanflow.py checks it against ``z_t - (t - r) u`` by hand). Without a target level that denoiser is
the instantaneous velocity ``u(z_t, t, t) = v``, an ordinary flow model for every other sampler; and this sampler
on an ordinary denoiser (one without ``sigma_to``) is DDIM.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from .._utils import GeneratorLike
from ._common import Callback, DenoiserFn, denoise, notify, sigma_list


def takes_target(denoiser: Any) -> bool:
    """Whether ``denoiser`` accepts a target level ``sigma_to`` (a :class:`~denoisekit.prediction.Denoiser`
    does; guidance wrappers do not pass one on)."""
    fn = denoiser.forward if isinstance(denoiser, nn.Module) else denoiser
    try:
        return "sigma_to" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def aims(denoiser: Any) -> bool:
    """Whether :func:`sample_meanflow` gives ``denoiser`` its target levels; a wrapper (guidance) around one that
    takes them would drop them, silently turning each jump into an Euler step: that is a ``ValueError``."""
    if takes_target(denoiser):
        return True
    inner = getattr(denoiser, "inner", None)
    while inner is not None:
        if takes_target(inner):
            raise ValueError(f"sampler 'meanflow' cannot pass its target levels through {type(denoiser).__name__} "
                             f"(guidance): sample a MeanFlow run unguided (--cfg 1)")
        inner = getattr(inner, "inner", None)
    return False


def sample_meanflow(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                    generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """MeanFlow's jumps ``z_r = z_t - (t - r) u(z_t, r, t)`` between consecutive levels of ``sigmas``
    (Geng et al. 2025, Algorithm 2; one evaluation per step): a DDIM step with ``x0`` aimed at the next level.
    A denoiser that takes no target level (an ordinary model, the exact oracle) is its instantaneous velocity
    ``u(z, t, t) = v``: its steps are DDIM's, Euler on the ODE."""
    target = aims(denoiser)
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        x0 = denoise(denoiser, x, s[i], cond, i, sigma_to=s[i + 1] if target else None)
        x = x0 + (s[i + 1] / s[i]) * (x - x0)
        notify(callback, i, x, s[i], s[i + 1], x0)
    return x
