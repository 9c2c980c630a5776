"""Running statistics of an evaluation: what one process has summed, saved for resuming, and reduced.

* :class:`Accumulator`: feature moments of the real and generated clips, per-clip metric sums, the code
  histogram and the batch numbers done.
* :func:`save_partial` / :func:`load_partial`: a process's accumulator on disk, written atomically every few
  batches so a stopped run resumes; an unreadable file is ignored with a warning (the run starts afresh).
* :func:`load_real_stats` / :func:`save_real_stats`: the cached real-clip feature statistics, likewise
  written atomically and ignored with a warning when unreadable (they are recomputed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from larp.evaluation.fvd import FeatureStats, all_reduce
from larp.files import write_atomic

__all__ = ["METRIC_SUMS", "Accumulator", "load_partial", "save_partial", "load_real_stats", "save_real_stats"]

logger = logging.getLogger(__name__)

# Every per-clip sum an evaluation may hold; all processes reduce all of them (see Accumulator.reduced).
METRIC_SUMS = ("clips", "skipped", "mse", "psnr", "ssim", "lpips", "nll_sampled", "nll_real", "class_correct")


@dataclass
class Accumulator:
    """One process's running statistics.

    Attributes:
        real: moments of the real clips' detector features.
        fake: moments of the generated (or reconstructed) clips' features.
        sums: metric name -> sum over clips (names from :data:`METRIC_SUMS`).
        codes: (codebook_size,) float64 histogram of the reconstruction task's token ids.
        done: batch numbers already added.
    """

    real: FeatureStats
    fake: FeatureStats
    codes: torch.Tensor
    sums: dict[str, float] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, feature_dim: int, codebook_size: int) -> Accumulator:
        codes = torch.zeros(codebook_size, dtype=torch.float64)
        return cls(FeatureStats(feature_dim), FeatureStats(feature_dim), codes)

    def add(self, name: str, values: torch.Tensor | float) -> None:
        """Add per-clip ``values`` (b,) (or one number) to the sum ``name``."""
        total = float(values.double().sum()) if isinstance(values, torch.Tensor) else float(values)
        self.sums[name] = self.sums.get(name, 0.0) + total

    def state_dict(self) -> dict[str, Any]:
        return {"real": self.real.state_dict(), "fake": self.fake.state_dict(), "sums": self.sums,
                "codes": self.codes, "done": self.done}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Accumulator:
        return cls(FeatureStats.from_state_dict(state["real"]), FeatureStats.from_state_dict(state["fake"]),
                   state["codes"], dict(state["sums"]), [int(k) for k in state["done"]])

    def reduced(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> Accumulator:
        """The sums over all processes (every process must call it: it is a collective)."""
        # every process sends every name (a process without batches has none), with a flag: present anywhere
        names = METRIC_SUMS
        values = [self.sums.get(n, 0.0) for n in names] + [float(n in self.sums) for n in names]
        totals = reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()
        sums = {n: totals[i] for i, n in enumerate(names) if totals[len(names) + i] > 0}
        return Accumulator(all_reduce(self.real, reduce_sum), all_reduce(self.fake, reduce_sum),
                           reduce_sum(self.codes), sums, list(self.done))


def save_partial(path: Path, acc: Accumulator) -> None:
    """Write a process's accumulator atomically (a kill mid-write keeps the previous save)."""
    write_atomic(path, lambda tmp: torch.save(acc.state_dict(), tmp))


def load_partial(path: Path) -> Accumulator | None:
    """The accumulator saved at ``path``; None when there is none, or (with a warning naming the file) when
    it cannot be read, in which case the run starts afresh."""
    if not path.is_file():
        return None
    try:
        return Accumulator.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # torn or foreign file: torch raises several types; starting afresh is always safe
        logger.warning("ignoring the unreadable partial statistics %s (%s): starting this process afresh", path, error)
        return None


def load_real_stats(path: Path | None) -> FeatureStats | None:
    """The cached real-clip statistics at ``path``; None when absent, or (with a warning naming the file)
    when unreadable, so they are computed again."""
    if path is None or not path.is_file():
        return None
    try:
        return FeatureStats.load(path)
    except Exception as error:  # a torn or foreign file; safetensors and FeatureStats raise several types
        logger.warning("ignoring the unreadable feature-statistics cache %s (%s): computing it again", path, error)
        return None


def save_real_stats(path: Path, stats: FeatureStats, metadata: dict[str, str]) -> None:
    stats.metadata = dict(metadata)
    stats.save(path)  # atomic
