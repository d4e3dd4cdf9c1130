"""What every training loop's optimiser shares: the learning-rate profile, AdamW from an ``optim`` section,
and the error a diverged run stops with."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .._utils import check_choice


class TrainingDiverged(FloatingPointError):
    """Raised after ``train.max_nan_steps`` consecutive steps with a non-finite loss or gradient."""


def lr_factor(step: int, *, warmup: int, total: int, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """LR multiplier for optimiser step ``step`` (0-based): linear warm-up, then constant or cosine
    decay to ``min_ratio`` at ``total`` (SGDR's cosine, Loshchilov & Hutter 2017, without restarts)."""
    check_choice("LR schedule", schedule, ("constant", "cosine"))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_adamw(params: Iterable[Any], optim: Any, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (Loshchilov & Hutter 2019) over ``params`` from an ``optim`` section (``lr``, ``betas``, ``eps``,
    ``weight_decay``, ``warmup_steps``, ``schedule``, ``min_lr_ratio``) and its LambdaLR profile."""
    o = optim
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, warmup=o.warmup_steps, total=total_steps, schedule=o.schedule, min_ratio=o.min_lr_ratio))
    return opt, sched


def joint_optimizer_state(optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    """Several optimisers' state dicts as one (parameter ids and groups concatenated in order)."""
    state: dict[int, Any] = {}
    groups: list[dict[str, Any]] = []
    offset = 0
    for opt in optimizers:
        sd = opt.state_dict()
        state.update({pid + offset: v for pid, v in sd["state"].items()})
        groups += [{**g, "params": [p + offset for p in g["params"]]} for g in sd["param_groups"]]
        offset += sum(len(g["params"]) for g in sd["param_groups"])
    return {"state": state, "param_groups": groups}


def split_joint_state(optimizers: list[torch.optim.Optimizer], joint: dict[str, Any]) -> list[dict[str, Any]]:
    """Inverse of :func:`joint_optimizer_state`: one state dict per optimiser."""
    out, offset, first_group = [], 0, 0
    for opt in optimizers:
        n_groups = len(opt.param_groups)
        groups = joint["param_groups"][first_group:first_group + n_groups]
        n_params = sum(len(g["params"]) for g in groups)
        out.append({
            "state": {pid - offset: v for pid, v in joint["state"].items() if offset <= pid < offset + n_params},
            "param_groups": [{**g, "params": [p - offset for p in g["params"]]} for g in groups]})
        offset, first_group = offset + n_params, first_group + n_groups
    return out


#: The per-parameter state AdamW keeps once a parameter has had a gradient.
ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")


def check_optimizer_state(opt: torch.optim.Optimizer, state: Mapping[str, Any], source: str) -> None:
    """Refuse an AdamW ``state_dict`` that would load but break the first step: other groups or parameter
    counts, unknown parameter ids, missing keys, tensors of the wrong shape, dtype or non-finite values.
    Errors name ``source`` and the key (``state.<param>.<name>``)."""
    groups = state.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        raise ValueError(f"{source}: the optimiser state has {len(groups) if isinstance(groups, list) else 'no'} "
                         f"parameter groups, the run's optimiser {len(opt.param_groups)}")
    params: dict[int, torch.Tensor] = {}
    for g, (saved, live) in enumerate(zip(groups, opt.param_groups)):
        ids = saved.get("params") if isinstance(saved, Mapping) else None
        if not isinstance(ids, list) or len(ids) != len(live["params"]):
            raise ValueError(f"{source}: optimiser group {g} holds {len(ids) if isinstance(ids, list) else 'no'} "
                             f"parameters, the run's {len(live['params'])}")
        for k in ("lr", "betas", "eps", "weight_decay"):
            if k not in saved:
                raise ValueError(f"{source}: optimiser group {g} has no {k!r}")
        params.update(zip(ids, live["params"]))
    amsgrad = any(g.get("amsgrad") for g in opt.param_groups)
    needed = ADAMW_STATE + (("max_exp_avg_sq",) if amsgrad else ())
    for pid, entry in state.get("state", {}).items():
        if pid not in params:
            raise ValueError(f"{source}: optimiser state for parameter {pid}, which the run's optimiser does not have")
        missing = [k for k in needed if k not in entry]
        if missing:
            raise ValueError(f"{source}: optimiser state of parameter {pid} lacks {', '.join(missing)} "
                             f"(key state.{pid}.{missing[0]})")
        p = params[pid]
        for name, v in entry.items():
            key = f"state.{pid}.{name}"
            if not isinstance(v, torch.Tensor):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"{source}: {key} is {v}")
                continue
            if name == "step":
                if v.numel() != 1 or not torch.isfinite(v).all() or float(v) < 0:
                    raise ValueError(f"{source}: {key} must be one finite count >= 0")
                continue
            if v.shape != p.shape:
                raise ValueError(f"{source}: {key} has shape {tuple(v.shape)}, parameter {pid} has {tuple(p.shape)}")
            if v.dtype != p.dtype:
                raise ValueError(f"{source}: {key} is {v.dtype}, parameter {pid} is {p.dtype}")
            if not torch.isfinite(v).all():
                raise ValueError(f"{source}: {key} contains NaN or inf")


def load_optimizer_states(optimizers: list[Any], saved: dict[str, Any], source: str) -> None:
    """Check (:func:`check_optimizer_state`) and load one optimiser's state dict, or several optimisers'
    joint one (:func:`joint_optimizer_state`)."""
    parts = [saved] if len(optimizers) == 1 else split_joint_state(optimizers, saved)
    for opt, part in zip(optimizers, parts, strict=True):
        check_optimizer_state(opt, part, source)
    for opt, part in zip(optimizers, parts):
        opt.load_state_dict(part)
