"""Learning-rate schedule and parameter groups with per-group multipliers."""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_mult: float) -> float:
    """Linear warmup from ``min_mult`` to 1, then cosine back to ``min_mult`` (LARP.md C.4; step counts from 1)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return min_mult + (1 - min_mult) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_mult + (1 - min_mult) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(named_modules: dict[str, nn.Module], lr_mults: dict[str, float]) -> list[dict]:
    """One group per name in ``named_modules``, each carrying its ``lr_mult`` (default 1)."""
    groups = []
    for name, module in named_modules.items():
        params = [p for _, p in sorted(module.named_parameters()) if p.requires_grad]
        if params:
            groups.append({"params": params, "name": name, "lr_mult": lr_mults.get(name, 1.0)})
    return groups


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, schedule_mult: float) -> None:
    """lr = base_lr x schedule x the group's own multiplier. The released LARP code set every group to
    base_lr x schedule here, silently dropping the prior's x50 (LARP.md B.4); this keeps it."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * schedule_mult * group.get("lr_mult", 1.0)
