"""torchrun / DDP plumbing: the only module of larp that imports torch.distributed for training.

Launched plainly, everything runs in one process. Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the
environment) a process group is created: nccl on CUDA, gloo on CPU; multi-node works through torchrun's
rendezvous (``--nnodes``, ``--rdzv-endpoint``) with nothing to change here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group if launched by torchrun, and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but CUDA is not available")
        target = torch.device("cuda", local_rank if target.index is None else target.index)
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world_size, target)


def wrap(module: nn.Module, info: DistInfo, **kwargs) -> nn.Module:
    """DDP-wrap ``module`` when running distributed; the module itself otherwise."""
    if not info.enabled:
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    module = getattr(module, "_orig_mod", module)  # torch.compile
    module = getattr(module, "module", module)  # DDP
    return getattr(module, "_orig_mod", module)


def no_sync(model: nn.Module, skip: bool) -> ContextManager:
    """DDP's ``no_sync()`` (gradients accumulate locally, no all-reduce) when ``skip`` and ``model`` is DDP,
    looking through a ``torch.compile`` wrapper (whose ``no_sync`` attribute lookup would not reach DDP's
    in every torch version); a no-op otherwise."""
    ddp = getattr(model, "_orig_mod", model)
    if skip and isinstance(ddp, DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


def sum_fn(info: DistInfo) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tensor -> sum over processes``, for code that must not import torch.distributed (the quantizer)."""
    return lambda tensor: all_reduce_sum(tensor, info)


def broadcast_fn(info: DistInfo, src: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tensor -> rank src's tensor`` (in place), for code that must not import torch.distributed."""
    return lambda tensor: broadcast_(tensor, info, src)


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= info.world_size
    return tensor


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def broadcast_(tensor: torch.Tensor, info: DistInfo, src: int = 0) -> torch.Tensor:
    """In place: every rank gets rank ``src``'s values."""
    if info.enabled:
        dist.broadcast(tensor, src)
    return tensor


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (a collective: all ranks must call it)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
