"""A run folder's bookkeeping, shared by the trainers: its lock, its recipe, its metrics log, resuming.

Layout: ``RUN/.lock`` (held by the training process, see :class:`larp.files.FolderLock`), ``RUN/recipe.yaml``
(the resolved recipe the run was started with), ``RUN/metrics.jsonl`` (one JSON line per logged step),
``RUN/checkpoints/`` (see :mod:`larp.training.checkpoint`), and whatever the trainer exports
(``tokenizer/``, ``generator/``, ``samples/``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from larp.config import config_to_dict
from larp.files import FolderLock, append_jsonl, read_jsonl, write_text_atomic
from larp.seeding import derive_seed
from larp.training import checkpoint as ckpt
from larp.training.distributed import DistInfo, gather_objects
from larp.training.recipe import recipe_from_dict, recipe_to_yaml

logger = logging.getLogger(__name__)

RECIPE_NAME = "recipe.yaml"
METRICS_NAME = "metrics.jsonl"

# Recipe settings a run may be resumed with changed (dotted keys): they decide how data is loaded, what is
# logged or evaluated and how often checkpoints are written, never the weights. Every other setting must match
# the one the run was started with. Validation and samples run on a fork of the random state
# (larp.training.loop), so their cadence does not move the training's random draws; data.num_workers is safe
# because every sample's randomness comes from its own seed (larp.training.data). Not in the set, on purpose:
# * data.val_*: the validation numbers of the run would stop being comparable;
# * steps: the learning-rate and scheduled-sampling schedules are functions of it;
# * compile, precision: they change the numerics.
RESUME_IGNORED: frozenset[str] = frozenset(
    {"data.num_workers", "tensorboard", "log_every", "eval_every", "sample_every", "checkpoint_every",
     "keep_checkpoints"}
)


class MetricsWriter:
    """metrics.jsonl, and TensorBoard scalars when the recipe asks for them (rank 0 only)."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = Path(run_dir) / METRICS_NAME
        self.board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from None
            self.board = SummaryWriter(Path(run_dir) / "tensorboard")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        append_jsonl(self.path, {"step": step, **{k: round(v, 6) for k, v in metrics.items()}})
        if self.board is not None:
            for name, value in metrics.items():
                self.board.add_scalar(name, value, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def prepare_run_dir(run_dir: Path, recipe, resume: bool, info: DistInfo) -> FolderLock | None:
    """Lock ``run_dir`` (main rank), check it against the recipe, and record the recipe.

    Resuming needs the recipe the run was started with, up to the settings in :data:`RESUME_IGNORED`;
    starting fresh needs a folder without checkpoints (a metrics log left by a run killed before its first
    checkpoint is removed).

    Returns:
        The held lock on the main rank (release it when the run ends; the process's death releases it too),
        None on the other ranks.

    Raises:
        larp.files.FolderLockedError: another live process trains in ``run_dir``.
        ValueError: the folder holds another run, or its ``recipe.yaml`` is unreadable.
    """
    run_dir = Path(run_dir)
    lock = FolderLock(run_dir, what="training run").acquire() if info.is_main else None
    try:
        saved = run_dir / RECIPE_NAME
        has_checkpoints = bool(ckpt.checkpoint_folders(run_dir))
        if resume and saved.is_file():
            previous = read_run_recipe(saved, type(recipe))
            changed = recipe_changes(previous, recipe)
            refused = {k: v for k, v in changed.items() if k not in RESUME_IGNORED}
            if refused:
                raise ValueError(f"the recipe differs from the one {run_dir} was started with ({_listing(refused)}); "
                                 f"resume with the same recipe, or start a new run directory")
            if changed and info.is_main:
                logger.info("resuming %s with changed settings that do not change results: %s", run_dir,
                            _listing(changed))
        elif not resume and has_checkpoints:
            raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it, "
                             f"or choose another --run-dir")
        if info.is_main:
            write_text_atomic(saved, recipe_to_yaml(recipe))
            if not has_checkpoints:  # nothing to resume: a log left by a killed run would mix with this one
                (run_dir / METRICS_NAME).unlink(missing_ok=True)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def read_run_recipe(path: Path, kind: type):
    """The recipe of ``kind`` recorded in a run folder's ``recipe.yaml``; a clear error naming it if unreadable."""
    fix = ("it records the recipe the run was started with: restore it, or delete it to resume with the "
           "recipe given now (it must be the one the run was started with), or start a new run directory")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} cannot be read ({' '.join(str(error).split())}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is {'empty' if data is None else 'not a recipe mapping'}; {fix}")
    try:
        return recipe_from_dict(data, kind)
    except ValueError as error:
        raise ValueError(f"{path} does not hold a valid {kind.__name__} ({error}); {fix}") from None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_changes(before, after) -> dict[str, tuple[Any, Any]]:
    """The settings (dotted keys) that differ between two recipes of one kind: key -> (before, after)."""
    old, new = _flatten(config_to_dict(before)), _flatten(config_to_dict(after))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _listing(changes: dict[str, tuple[Any, Any]], most: int = 6) -> str:
    shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changes.items())[:most])
    return shown + (f" and {len(changes) - most} more" if len(changes) > most else "")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint a run resumes from (they will be logged again), and any
    torn line (with a warning naming the file). The file is rewritten atomically."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def save_run_checkpoint(run_dir: Path, step: int, weights: dict, extra: dict, info: DistInfo, keep: int) -> None:
    """Checkpoint a run: every rank calls it (each rank's RNG states are gathered), rank 0 writes."""
    rng_states = gather_objects(ckpt.rng_state(), info)
    if info.is_main:
        ckpt.save_checkpoint(run_dir, step, weights, {**extra, "step": step, "rng": rng_states}, keep=keep)


def restore_rng(extra: dict, info: DistInfo) -> None:
    """This rank's RNG states from a checkpoint; fresh streams when the process count changed."""
    if len(extra["rng"]) == info.world_size:
        ckpt.set_rng_state(extra["rng"][info.rank])
    else:
        logger.warning("the run was saved with %d processes and resumes with %d: random streams restart",
                       len(extra["rng"]), info.world_size)
        torch.manual_seed(derive_seed(int(extra["step"]), info.rank))
