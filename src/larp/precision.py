"""The one precision rule of the library: what ``fp32``, ``bf16``, ``fp16`` and ``auto`` mean on each device.

Weights stay in fp32; reduced precision is autocast over them, so norms, softmax and the vector quantizer
keep fp32 where autocast keeps it (more ids equal to fp32 than casting the weights).

==========  =====================================  ==========================================
name        on CUDA                                on CPU (and other devices)
==========  =====================================  ==========================================
``fp32``    no autocast                            no autocast
``bf16``    bf16 autocast                          bf16 autocast
``fp16``    fp16 autocast (+ a gradient scaler     refused: fp16 autocast on a CPU is slow and
            when training)                         loses accuracy; use ``bf16`` or ``fp32``
``auto``    ``bf16`` (the official trainers and    ``fp32``
            sampler run bf16 on GPUs)
==========  =====================================  ==========================================

Every command, trainer and evaluation resolves its setting through :func:`resolve_precision` and records
the resolved name, so a result always says which precision produced it.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["PRECISIONS", "autocast", "needs_grad_scaler", "resolve_precision"]

#: The names a recipe, protocol or ``--dtype`` flag accepts.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device | str) -> str:
    """The concrete precision (``fp32``, ``bf16`` or ``fp16``) that ``name`` means on ``device``.

    Raises:
        ValueError: an unknown name, or ``fp16`` on a device other than CUDA.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if name == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if name == "fp16" and device_type != "cuda":
        raise ValueError(f"fp16 autocast needs a CUDA device (got {device_type}): use bf16 or fp32 there")
    return name


def autocast(name: str, device: torch.device | str) -> ContextManager:
    """The autocast context of precision ``name`` on ``device`` (a no-op for fp32)."""
    resolved = resolve_precision(name, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_AUTOCAST_DTYPES[resolved])


def needs_grad_scaler(name: str, device: torch.device | str) -> bool:
    """Whether training in precision ``name`` on ``device`` needs loss scaling (fp16 only)."""
    return resolve_precision(name, device) == "fp16"
