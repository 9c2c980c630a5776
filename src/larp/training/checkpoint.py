"""Run checkpoints: weights as safetensors, the rest of the training state as a weights-only torch file.

Layout of a run folder::

    RUN/checkpoints/step-00001000/{tokenizer,prior,discriminator,...}.safetensors  weights
    RUN/checkpoints/step-00001000/state.pt   optimizers, schedulers, scalers, step, sampler position, RNG
    RUN/checkpoints/latest                   the name of the newest complete checkpoint

A checkpoint is written under a temporary name and renamed when complete, and ``latest`` is replaced
atomically afterwards, so a crash or a full disk at any moment leaves the previous checkpoint intact and
pointed to. A checkpoint damaged afterwards (a power cut before the data reached the disk, a copy cut
short) is found by :func:`resume_point`, which falls back to the previous one.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from larp.files import disk_full_message, is_disk_full, write_text_atomic

logger = logging.getLogger(__name__)

STATE_NAME = "state.pt"
LATEST_NAME = "latest"
_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read completely; the message names the file and the reason."""


def _checkpoints(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_folders(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint folders of a run (``step-NNNNNNNN``, complete or damaged), oldest first."""
    root = _checkpoints(run_dir)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if _FOLDER.fullmatch(p.name) and p.is_dir()]
    return sorted(folders, key=_step_of)


def _step_of(folder: Path) -> int:
    return int(_FOLDER.fullmatch(folder.name).group(1))


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write one checkpoint atomically, then keep only the newest ``keep`` (>= 1) up to ``step``.

    Checkpoints of later steps are removed: they belong to a continuation this run abandoned when it resumed
    from an older checkpoint (the newer ones could not be read).

    Raises:
        OSError: the disk filled up (``errno.ENOSPC``); the message names the checkpoint folder, the partial
            folder is removed and the previous checkpoint and ``latest`` are left as they were.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: a run must keep at least its newest checkpoint (keep_checkpoints >= 1)")
    root = _checkpoints(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    final, tmp = root / name, root / f".{name}.tmp"
    renamed = False
    try:
        tmp.mkdir()
        for part, tensors in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"{part}.safetensors")
        torch.save(state, tmp / STATE_NAME)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        renamed = True
        write_text_atomic(root / LATEST_NAME, name + "\n")
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if renamed:  # `latest` still names the previous checkpoint: leave the folder as it was before the save
            shutil.rmtree(final, ignore_errors=True)
        if is_disk_full(error):
            raise OSError(errno.ENOSPC, disk_full_message(final)) from error
        raise
    folders = checkpoint_folders(run_dir)
    for abandoned in (f for f in folders if _step_of(f) > step):
        logger.warning("removing %s: it is newer than the checkpoint just written, from a continuation of the run "
                       "that was abandoned when it resumed from an older checkpoint", abandoned)
        shutil.rmtree(abandoned, ignore_errors=True)
    for old in [f for f in folders if _step_of(f) <= step][:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (as named by ``latest``), or None. Its files are not read:
    to resume, use :func:`resume_point`, which checks them."""
    root = _checkpoints(run_dir)
    pointer = root / LATEST_NAME
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if (folder / STATE_NAME).is_file():
            return folder
    complete = [p for p in checkpoint_folders(run_dir) if (p / STATE_NAME).is_file()]
    return complete[-1] if complete else None


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(weights by part, training state) of one checkpoint folder.

    Raises:
        CheckpointError: a file is missing, truncated or garbled; the message names it.
    """
    folder = Path(folder)
    state_path = folder / STATE_NAME
    if not state_path.is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint: {STATE_NAME} is missing")
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            weights[path.stem] = load_file(path)
        except Exception as error:  # safetensors raises its own error type (header too small, incomplete, ...)
            raise CheckpointError(f"cannot read {path}: {_one_line(error)}") from error
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # EOFError when empty, RuntimeError when the archive is cut, pickle errors
        raise CheckpointError(f"cannot read {state_path}: {_one_line(error)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read {state_path}: expected a dict of training state, "
                              f"got {type(state).__name__}")
    return weights, state


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no details"
    return f"{type(error).__name__}: {text}"


def resume_point(run_dir: str | os.PathLike) -> tuple[Path, dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
    """(folder, weights by part, training state) of the newest checkpoint of a run that loads completely.

    A checkpoint that cannot be read is skipped with a warning naming its file and the reason, and the
    previous one is tried. Returns None when the run has no checkpoint.

    Raises:
        CheckpointError: the run has checkpoints but none can be read; the message names each one and why.
    """
    folders = checkpoint_folders(run_dir)
    failures = []
    for folder in reversed(folders):
        try:
            weights, state = load_checkpoint(folder)
        except CheckpointError as error:
            logger.warning("checkpoint %s cannot be used (%s); trying the previous one", folder, error)
            failures.append(str(error))
            continue
        if failures:
            logger.warning("resuming from %s: the %d newer checkpoint(s) could not be read", folder, len(failures))
        return folder, weights, state
    if failures:
        raise CheckpointError(f"none of the {len(failures)} checkpoint(s) of {run_dir} can be read: "
                              f"{'; '.join(failures)}. Start the run again in a new folder")
    return None


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
