"""A run folder's bookkeeping, shared by the trainers: its recipe, its metrics log, resuming.

Layout: ``RUN/recipe.yaml`` (the resolved recipe the run was started with), ``RUN/metrics.jsonl``
(one JSON line per logged step), ``RUN/checkpoints/`` (see :mod:`larp.training.checkpoint`), and
whatever the trainer exports (``tokenizer/``, ``generator/``, ``samples/``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import yaml

from larp.config import config_to_dict
from larp.training import checkpoint as ckpt
from larp.training.distributed import DistInfo, gather_objects
from larp.training.recipe import recipe_from_dict, recipe_to_yaml

logger = logging.getLogger(__name__)


class MetricsWriter:
    """metrics.jsonl, and TensorBoard scalars when the recipe asks for them (rank 0 only)."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        self.board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from None
            self.board = SummaryWriter(run_dir / "tensorboard")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in metrics.items()}}) + "\n")
        if self.board is not None:
            for name, value in metrics.items():
                self.board.add_scalar(name, value, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def prepare_run_dir(run_dir: Path, recipe, resume: bool, info: DistInfo) -> None:
    """Create ``run_dir`` and record the recipe; refuse to mix runs.

    Resuming needs the recipe the run was started with; starting fresh needs a folder without checkpoints.
    """
    saved = run_dir / "recipe.yaml"
    if resume and saved.is_file():
        previous = recipe_from_dict(yaml.safe_load(saved.read_text()), type(recipe))
        if previous != recipe:
            ours, theirs = config_to_dict(recipe), config_to_dict(previous)
            changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise ValueError(f"the recipe differs from the one {run_dir} was started with (sections {changed}); "
                             f"resume with the same recipe, or start a new run directory")
    elif not resume and ckpt.latest_checkpoint(run_dir) is not None:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(recipe_to_yaml(recipe))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint a run resumes from (they will be logged again)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


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
        torch.manual_seed(int(extra["step"]) * 7919 + info.rank)
