"""Learning-rate schedule with per-group multipliers, and the optimizer-state surgery of codebook restarts."""

from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_mult: float) -> float:
    """Linear warmup from ``min_mult`` to 1, then cosine back to ``min_mult`` (LARP.md C.4; step counts from 1)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return min_mult + (1 - min_mult) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_mult + (1 - min_mult) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, schedule_mult: float) -> None:
    """lr = base_lr x schedule x the group's own multiplier. The released LARP code set every group to
    base_lr x schedule here, silently dropping the prior's x50 (LARP.md B.4); this keeps it."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * schedule_mult * group.get("lr_mult", 1.0)


@torch.no_grad()
def reset_optimizer_rows(optimizer: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero the Adam moments (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) of some rows of ``param``, so
    that re-initialised rows (restarted codes) do not move on with the old rows' momentum.

    Args:
        param: a (K, ...) parameter of ``optimizer``.
        rows: (K,) bool mask of the rows to reset (a mask, not indices: no host sync).
    """
    state = optimizer.state.get(param, {})
    mask = rows.reshape(-1, *([1] * (param.ndim - 1)))  # (K, 1, ...): broadcasts over the row
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state:
            state[key].masked_fill_(mask, 0)
