"""The clips an evaluation scores: where they come from, how they are batched, and which process takes which.

* :class:`ClipSource`: the videos of a manifest, a folder, or the built-in synthetic held-out set, with the
  clips :func:`~larp.evaluation.protocols.select_clips` chooses and a fingerprint of the data (for caches).
* :func:`plan_batches`: the clips cut into fixed batches, numbered once for all processes, and the batches of
  one process (:func:`~larp.evaluation.protocols.shard` over the batch numbers).
* :func:`read_batch`: one batch read from disk; a corrupt video is skipped (and counted), not fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from larp.data.video_io import probe_video, read_video
from larp.evaluation.protocols import EvalProtocol, select_clips, shard
from larp.files import write_json_atomic
from larp.weights import cache_dir

__all__ = ["SYNTHETIC", "ClipSource", "BatchPlan", "plan_batches", "read_batch", "digest"]

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"

Clip = tuple[int, int]  # (video index, start frame)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ClipSource:
    """The videos of a manifest, a folder, or the built-in synthetic set, as clips ``(video, start)``."""

    def __init__(self, data: str, protocol: EvalProtocol, *, root: str | None = None, progress: bool = False):
        self.data, self.protocol = data, protocol
        if data == SYNTHETIC:
            from larp.data.synthetic import SyntheticConfig, SyntheticVideos

            count = protocol.num_samples or 512
            # the held-out set: training recipes draw their clips with seed 0 (validation: the first 256 of seed 1)
            self.synthetic = SyntheticVideos(SyntheticConfig(num_videos=count, seed=1, frames=protocol.frames,
                                                             size=protocol.size))
            self.entries, counts = None, [protocol.frames] * count
            self.fingerprint = digest(json.dumps(self.synthetic.config.__dict__, sort_keys=True, default=str))
        else:
            from larp.data.datasets import load_entries

            self.synthetic = None
            self.entries = load_entries(data, root=root)
            self.fingerprint = _data_fingerprint(data, self.entries)
            counts = _frame_counts(self.entries, self.fingerprint, progress)
        self.items: list[Clip] = select_clips(counts, protocol)

    @property
    def labels_are_detector_classes(self) -> bool:
        """Whether the clip labels are the synthetic-data detector's classes (a folder's labels number its
        sub-folders alphabetically, which no detector knows): only then is class accuracy scored."""
        return self.synthetic is not None

    def label(self, item: Clip) -> int:
        index = item[0]
        return self.synthetic.label(index) if self.synthetic is not None else self.entries[index].label

    def read(self, item: Clip) -> torch.Tensor:
        """(3, frames, size, size) in [0, 1]; short videos repeat their last frame."""
        index, start = item
        if self.synthetic is not None:
            return self.synthetic[index]["video"]
        p = self.protocol
        return read_video(self.entries[index].path, start=start, num_frames=p.frames, size=p.size, pad=True)


def _data_fingerprint(data: str, entries) -> str:
    """The manifest's bytes (or the folder's file list with sizes): what identifies the real clips."""
    path = Path(data)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    listing = [(e.path, e.label, os.path.getsize(e.path) if os.path.exists(e.path) else -1) for e in entries]
    return digest(json.dumps(listing))


def _load_counts(path: Path, expected: int) -> list[int] | None:
    """The cached frame counts, or None (with a warning naming the file) when the file is unreadable."""
    try:
        counts = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        logger.warning("ignoring the unreadable frame-count cache %s (%s): counting again", path, error)
        return None
    if not isinstance(counts, list) or len(counts) != expected or not all(isinstance(c, int) for c in counts):
        logger.warning("ignoring the frame-count cache %s: not %d integers; counting again", path, expected)
        return None
    return counts


def _frame_counts(entries, fingerprint: str, progress: bool) -> list[int]:
    """Frames of every video, counted once per dataset (cached: counting decodes the packets)."""
    path = cache_dir() / "frame-counts" / f"{fingerprint[:32]}.json"
    if path.is_file():
        counts = _load_counts(path, len(entries))
        if counts is not None:
            return counts
    counts = []
    for entry in tqdm(entries, desc="count frames", unit="video", disable=not progress):
        try:
            counts.append(probe_video(entry.path).num_frames)
        except Exception as error:  # a corrupt video has no clip; it is skipped and counted
            logger.warning("skipping %s: %s", entry.path, error)
            counts.append(0)
    write_json_atomic(path, counts, indent=None)
    return counts


@dataclass(frozen=True)
class BatchPlan:
    """The clips cut into batches numbered for all processes, and the numbers this process handles.

    Batch ``k`` is the same clips in every process and seeds its random draws with ``(protocol.seed, k)``,
    so a run's samples do not depend on the number of processes.
    """

    batches: list[list[Clip]]
    mine: list[int]

    def clips(self, numbers) -> int:
        return sum(len(self.batches[k]) for k in numbers)


def plan_batches(items: list[Clip], batch_size: int, rank: int, world_size: int) -> BatchPlan:
    """Cut ``items`` into batches of ``batch_size`` and give process ``rank`` its share (strided)."""
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    return BatchPlan(batches, shard(range(len(batches)), rank, world_size))


def read_batch(source: ClipSource, batch: list[Clip]) -> tuple[torch.Tensor | None, list[Clip]]:
    """The batch's clips stacked (b, 3, t, h, w) (None when none could be read) and the clips kept; a video
    that fails to decode is skipped with a warning."""
    clips, kept = [], []
    for item in batch:
        try:
            clips.append(source.read(item))
            kept.append(item)
        except Exception as error:  # a corrupt video: skipped, counted, reported
            logger.warning("skipping clip %s: %s", item, error)
    return (torch.stack(clips) if clips else None), kept
