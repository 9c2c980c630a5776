"""Run checkpoints: weights as safetensors, the rest of the training state as a weights-only torch file.

Layout of a run folder::

    RUN/checkpoints/step-00001000/{tokenizer,prior,discriminator,...}.safetensors  weights
    RUN/checkpoints/step-00001000/state.pt   optimizers, schedulers, scalers, step, sampler position, RNG
    RUN/checkpoints/latest                   the name of the newest complete checkpoint

A checkpoint is written under a temporary name and renamed when complete, and ``latest`` is replaced
atomically afterwards, so a crash at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_NAME = "state.pt"


def _checkpoints(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write one checkpoint atomically and keep only the newest ``keep``."""
    root = _checkpoints(Path(run_dir))
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for part, tensors in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"{part}.safetensors")
    torch.save(state, tmp / STATE_NAME)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / ".latest.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / "latest")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = _checkpoints(Path(run_dir))
    pointer = root / "latest"
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if (folder / STATE_NAME).is_file():
            return folder
    complete = sorted(p for p in root.glob("step-*") if (p / STATE_NAME).is_file())
    return complete[-1] if complete else None


def load_checkpoint(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(weights by part, training state) of one checkpoint folder."""
    weights = {p.stem: load_file(p) for p in sorted(folder.glob("*.safetensors"))}
    state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
    return weights, state


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": numpy_state,
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = dict(numpy_state["state"], key=np.array(numpy_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(numpy_state)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
