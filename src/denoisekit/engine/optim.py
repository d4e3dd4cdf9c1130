"""What every training loop's optimiser shares: the learning-rate profile, AdamW from an ``optim`` section,
and the error a diverged run stops with."""

from __future__ import annotations

import math
from collections.abc import Iterable
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


def load_joint_optimizer_state(optimizers: list[torch.optim.Optimizer], joint: dict[str, Any]) -> None:
    """Inverse of :func:`_joint_optimizer_state`."""
    offset, first_group = 0, 0
    for opt in optimizers:
        n_groups = len(opt.param_groups)
        groups = joint["param_groups"][first_group:first_group + n_groups]
        n_params = sum(len(g["params"]) for g in groups)
        opt.load_state_dict({
            "state": {pid - offset: v for pid, v in joint["state"].items() if offset <= pid < offset + n_params},
            "param_groups": [{**g, "params": [p - offset for p in g["params"]]} for g in groups]})
        offset, first_group = offset + n_params, first_group + n_groups
