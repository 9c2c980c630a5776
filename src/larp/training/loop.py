"""The one training loop: stepping, gradient accumulation, cadences, checkpoints, over a task's functions.

A trainer (tokenizer, generator, the detector) is a :class:`Task`: it builds its models and data, and
supplies ``train_step(step)``, ``evaluate(step)``, ``write_samples(step)``, ``export()`` and the
:class:`Stateful` parts of its state by name. The :class:`Trainer` owns everything else: the step counter,
when to log, validate, write samples and checkpoint, ``stop_after``, throughput, the progress bar and
metrics.jsonl, and saving / restoring every part by iterating over the names (the names are the
checkpoint's file and key names, kept as 0.1.0 wrote them, so old run folders still resume).

The pieces a ``train_step`` shares are here too: :func:`micro_batches` (gradient accumulation with DDP
``no_sync``), :func:`optimizer_step` (unscale, clip, step) and :class:`EMA`.

Host syncs: a step returns its metrics as tensors, and the trainer turns them into numbers (one all-reduce
and one host sync) only on steps that log or validate. The trainers' steps add none of their own (inputs
are checked on their CPU copies); what remains is GradScaler's inf check under fp16, and the tokenizer's
input check when a generator run encodes clips on the fly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from larp.seeding import derive_seed
from larp.training import distributed as dist
from larp.training.checkpoint import resume_point
from larp.training.run_dir import MetricsWriter, restore_rng, save_run_checkpoint, truncate_metrics

logger = logging.getLogger(__name__)

Metrics = dict[str, torch.Tensor | float]


class Stateful(Protocol):
    """A part of the training state: models, optimizers, scalers, EMA, the data stream, counters."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class Task(Protocol):
    """What a trainer supplies to the loop. ``evaluate``, ``write_samples`` and ``export`` run on the main
    process only; ``train_step`` on every process."""

    name: str  # the progress bar's label, e.g. "train-tokenizer"
    unit: str  # what a step consumes, for the throughput metric "<unit>_per_s": "clips", "sequences"
    items_per_step: int  # of them per step, this process (batch size x accumulation)
    progress_keys: tuple[str, ...]  # metrics shown next to the progress bar
    export_dir: Path | None  # where export() writes (None: nothing exported)

    def train_step(self, step: int) -> Metrics:
        """One optimizer step (``step`` counts from 1); metrics of this process, tensors not yet synced."""

    def evaluate(self, step: int) -> dict[str, float]: ...

    def write_samples(self, step: int) -> None: ...

    def export(self) -> None: ...

    def weights(self) -> dict[str, Stateful]:
        """Parts saved as NAME.safetensors (their state_dict is a flat name -> tensor mapping)."""

    def training_state(self) -> dict[str, Stateful]:
        """Parts saved under NAME in state.pt (any torch.load(weights_only=True)-readable value)."""


@dataclass(frozen=True)
class Cadence:
    """How long a run is and how often it logs, validates, writes samples and checkpoints (0: never, except
    at the last step)."""

    steps: int
    log_every: int = 10
    eval_every: int = 0
    sample_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    tensorboard: bool = False

    @classmethod
    def of(cls, recipe) -> Cadence:
        """The cadence fields of a tokenizer or generator recipe."""
        return cls(recipe.steps, recipe.log_every, recipe.eval_every, recipe.sample_every, recipe.checkpoint_every,
                   recipe.keep_checkpoints, recipe.tensorboard)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _isolated_rng(info: dist.DistInfo) -> AbstractContextManager:
    """Validation and samples draw from a fork of the random state (a DataLoader draws its base seed even
    without workers), so when they run never changes the training's random stream: a run may change its
    ``eval_every`` / ``sample_every`` on resume and still give the same weights."""
    return torch.random.fork_rng(devices=[info.device] if info.device.type == "cuda" else [])


# ------------------------------------------------------------------------------------------ step pieces
def micro_batches(model: nn.Module, accumulation: int) -> Iterator[tuple[int, AbstractContextManager]]:
    """``(index, context)`` for each micro-batch of a step: run its forward and backward inside the context.
    Under DDP only the last micro-batch all-reduces gradients (the others run under ``no_sync``, also when
    ``model`` is torch.compile'd DDP)."""
    for micro in range(accumulation):
        yield micro, dist.no_sync(model, skip=micro < accumulation - 1)


def optimizer_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, parameters, grad_clip: float
) -> torch.Tensor | None:
    """Unscale, clip the global gradient norm to ``grad_clip`` (when > 0), step and update the scaler.

    Returns:
        The gradient norm before clipping (0-d tensor), or None without clipping.
    """
    norm = None
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return norm


def reduce_metrics(metrics: Metrics, info: dist.DistInfo) -> dict[str, float]:
    """Tensor metrics averaged over processes (one all-reduce, one host sync); plain numbers (the same in
    every process: learning rate, schedules) pass through."""
    names = sorted(k for k, v in metrics.items() if isinstance(v, torch.Tensor))
    result = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    if names:
        stacked = torch.stack([metrics[k].detach().float().reshape(()).to(info.device) for k in names])
        result.update(zip(names, dist.all_reduce_mean(stacked, info).tolist()))  # the host sync
    return result


class EMA:
    """Exponential moving average of a module's floating-point weights (a Stateful part: its state_dict is
    the averaged weights, by the module's own names)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, value in module.state_dict().items():
            if name in self.shadow:
                self.shadow[name].lerp_(value.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise ValueError(f"the EMA weights hold {sorted(state)[:3]}..., expected {sorted(self.shadow)[:3]}...")
        for name, value in state.items():
            self.shadow[name].copy_(value)

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module`` (its other entries, buffers, stay)."""
        module.load_state_dict({**module.state_dict(), **self.shadow})


# ------------------------------------------------------------------------------------------ the loop
class Trainer:
    """Runs a :class:`Task` for ``cadence.steps`` steps, from step 0 or from a run folder's checkpoint.

    Without a ``run_dir`` nothing is written (no metrics, checkpoints or samples): the detector's training.
    """

    def __init__(self, task: Task, cadence: Cadence, info: dist.DistInfo, *, run_dir: Path | None = None,
                 progress: bool = True):
        self.task, self.cadence, self.info, self.run_dir, self.progress = task, cadence, info, run_dir, progress
        self.step = 0

    # -------------------------------------------------------------------- state
    def start(self, *, resume: bool, seed: int) -> None:
        """Restore the newest readable checkpoint when resuming (and there is one); otherwise seed this
        process's random stream (each process its own, derived from ``seed``)."""
        point = resume_point(self.run_dir) if resume and self.run_dir is not None else None
        if point is None:
            torch.manual_seed(derive_seed(seed, self.info.rank))
            return
        folder, weights, state = point
        for parts, saved, where in ((self.task.weights(), weights, "weights"), (self.task.training_state(), state, "state.pt")):
            for name, part in parts.items():
                if name not in saved:
                    raise ValueError(f"checkpoint {folder} has no {name!r} in its {where}: it was written by a run "
                                     f"with another recipe; start a new run directory")
                part.load_state_dict(saved[name])
        self.step = int(state["step"])
        restore_rng(state, self.info)
        if self.info.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        logger.info("resumed %s at step %d", self.run_dir, self.step)

    def save(self) -> None:
        """A checkpoint of every part; every process calls it (RNG states are gathered), the main one writes."""
        weights = {name: part.state_dict() for name, part in self.task.weights().items()} if self.info.is_main else {}
        state = {name: part.state_dict() for name, part in self.task.training_state().items()}
        save_run_checkpoint(self.run_dir, self.step, weights, state, self.info, self.cadence.keep_checkpoints)
        dist.barrier(self.info)

    # -------------------------------------------------------------------- running
    def fit(self, stop_after: int | None = None) -> None:
        """Train up to ``cadence.steps``, or stop (with a checkpoint) after global step ``stop_after``."""
        task, cadence, info = self.task, self.cadence, self.info
        main = info.is_main
        writer = MetricsWriter(self.run_dir, cadence.tensorboard) if main and self.run_dir is not None else None
        bar = tqdm(total=cadence.steps, initial=self.step, desc=task.name, unit="step",
                   disable=not (self.progress and main), dynamic_ncols=True)
        items_per_step = task.items_per_step * info.world_size
        started, first_step = time.perf_counter(), self.step
        try:
            while self.step < cadence.steps:
                self.step += 1
                step, last = self.step, self.step == cadence.steps
                metrics = task.train_step(step)
                bar.update(1)
                validate = _due(step, cadence.eval_every) or last
                if _due(step, cadence.log_every) or last or validate:  # every process: the reduction is collective
                    logged = reduce_metrics(metrics, info)
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    logged[f"{task.unit}_per_s"] = items_per_step * (step - first_step) / elapsed
                    if validate:
                        if main:
                            with _isolated_rng(info):
                                logged.update(task.evaluate(step))
                        dist.barrier(info)
                    if writer is not None:
                        writer.write(step, logged)
                    bar.set_postfix({k: f"{logged[k]:.3g}" for k in (*task.progress_keys, f"{task.unit}_per_s")
                                     if k in logged})
                if main and self.run_dir is not None and (_due(step, cadence.sample_every) or last):
                    with _isolated_rng(info):
                        task.write_samples(step)
                done = last or (stop_after is not None and step >= stop_after)
                if self.run_dir is not None and (_due(step, cadence.checkpoint_every) or done):
                    self.save()
                if done:
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()

    def export(self) -> Path | None:
        """The task's export (main process) once the run is complete; the folder it writes to."""
        if self.step >= self.cadence.steps and self.info.is_main:
            self.task.export()
        dist.barrier(self.info)
        return self.task.export_dir
