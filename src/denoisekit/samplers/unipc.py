"""UniPC (Zhao et al. 2023): a multistep predictor (UniP-p) and a corrector (UniC-p) that raises its
order by one for free, in data prediction.

In the VE frame put ``lambda = -log(sigma)``, ``h = lambda_t - lambda_s`` and ``hh = -h`` (data
prediction). The predictor of order ``p`` from ``y_s`` with model outputs ``m_0`` (at ``s``) and
``m_k`` at earlier ``lambda_k`` (``r_k = (lambda_k - lambda_s) / h < 0``) is

    y_t = (sigma_t / sigma_s) y_s - (e^hh - 1) m_0 - B(h) sum_k a_k (m_k - m_0) / r_k,

with ``B(h) = hh`` ("bh1") or ``e^hh - 1`` ("bh2"), and ``a`` solving ``R a = g`` where
``R[i][k] = r_k^i`` and ``g_i = hh phi_{i+2}(hh) (i+1)! / B(h)`` (Zhao et al. 2023, Sec. 3, the
multistep UniPC algorithm; ``phi`` as in :mod:`.dpm_solver`). UniC repeats the step with the model output at
the predicted point added (``r = 1``) and the system one row larger; its output replaces the prediction,
and that model output is reused by the next step, so the corrector costs no evaluation. As in the
authors' code, UniP-2 uses ``a = 1/2`` (then UniP-2 with "bh2" is exactly DPM-Solver++(2M)) and UniC-1
uses ``1/2``.

A step to ``sigma = 0`` has ``h = inf``; it is the first-order step, exactly ``y = D(y, sigma)``, and
is not corrected (no model evaluation follows it).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from .._utils import GeneratorLike, check_choice
from ._common import Callback, DenoiserFn, denoise, notify, sigma_list
from .dpm_solver import phi

Variant = Literal["bh1", "bh2"]


def _solve(rows: list[list[float]], rhs: list[float]) -> list[float]:
    out = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return out.tolist()


def _unified_update(x: Tensor, sig: float, nxt: float, lams: list[float], ds: list[Tensor], order: int,
                    variant: str, d_new: Tensor | None) -> Tensor:
    """One UniP-``order`` step from ``(x, sig)`` to ``nxt`` (``d_new is None``), or the UniC-``order``
    correction of it given the model output ``d_new`` at the predicted point.

    ``lams``/``ds``: lambdas and model outputs of past grid points, the last one at ``sig``.
    """
    h = math.log(sig / nxt)
    hh = -h
    m0 = ds[-1]
    base = (nxt / sig) * x - math.expm1(hh) * m0
    rks = [(lams[-1 - k] - lams[-1]) / h for k in range(1, order)]
    diffs = [(ds[-1 - k] - m0) / r for k, r in zip(range(1, order), rks)]
    if d_new is None and order == 1:
        return base
    b_h = hh if variant == "bh1" else math.expm1(hh)
    g = [hh * phi(i + 2, hh) * math.factorial(i + 1) / b_h for i in range(order)]
    if d_new is None:  # predictor: the system on the order - 1 history points
        rhos = [0.5] if order == 2 else _solve([[r**i for r in rks] for i in range(order - 1)], g[:order - 1])
        res = sum(a * dk for a, dk in zip(rhos, diffs))
    else:  # corrector: the history points plus the new point at r = 1
        pts = rks + [1.0]
        rhos = [0.5] if order == 1 else _solve([[r**i for r in pts] for i in range(order)], g)
        res = sum((a * dk for a, dk in zip(rhos[:-1], diffs)), rhos[-1] * (d_new - m0))
    return base - b_h * res


def sample_unipc(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, variant: Variant = "bh2", order: int = 3,
                 lower_order_final: bool = True, corrector: bool = True, cond: Any = None,
                 generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """UniPC (Zhao et al. 2023, multistep UniPC algorithm): UniP-p predictor, UniC-p corrector after every step
    but the last, data prediction, 1 NFE per step.

    ``variant`` picks ``B(h)`` ("bh1" is recommended for unconditional sampling, "bh2" for guided);
    ``order`` is 1, 2 or 3 (the corrected method has order ``order + 1``). Warm-up uses lower orders;
    with ``lower_order_final`` the k-th step from the end uses order <= k. ``corrector=False`` leaves
    the predictor UniP-p alone. ``callback`` sees the predicted state; the next step corrects it.
    """
    check_choice("variant", variant, ("bh1", "bh2"))
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order!r}")
    s = sigma_list(sigmas)
    n = len(s) - 1
    lams: list[float] = []
    ds: list[Tensor] = []
    x_prev, prev_order = x, 0
    for i in range(n):
        sig, nxt = s[i], s[i + 1]
        d = denoise(denoiser, x, sig, cond, i)
        if i > 0 and corrector:  # UniC for the step s[i-1] -> s[i], with the evaluation just made at the prediction
            x = _unified_update(x_prev, s[i - 1], sig, lams, ds, prev_order, variant, d)
        lams, ds = (lams + [-math.log(sig)])[-order:], (ds + [d])[-order:]
        p = min(order, len(ds), n - i if lower_order_final else order)
        x_prev, prev_order = x, p
        x = d if nxt == 0 else _unified_update(x, sig, nxt, lams, ds, p, variant, None)
        notify(callback, i, x, sig, nxt, d)
    return x
