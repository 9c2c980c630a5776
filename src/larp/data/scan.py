"""Check a video dataset before training: unreadable, short, duplicated and leaked videos.

:func:`scan_videos` opens every video of a training list (and optionally a validation
list) and reports:

* videos that cannot be read (missing, corrupt, not a video), with the reason;
* videos shorter than a clip (the training pipeline pads them by repeating the last frame,
  as the official code does, but a dataset full of them is rarely intended);
* duplicates within a list: the same file listed twice (same resolved path), or
  different files with the same bytes (sha256);
* overlap between the training and validation lists: the same file name (the official
  Kinetics-600 lists share names between train and val, LARP.md G.3 #6) or the same bytes.

Only files whose sizes collide are hashed, so content checks cost little unless the data
really has many same-sized files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from larp.data.datasets import VideoEntry
from larp.data.video_io import VideoReadError, probe_video

__all__ = ["Duplicate", "Overlap", "ScanReport", "VideoProblem", "scan_videos"]

logger = logging.getLogger(__name__)

# Bytes read at a time when hashing.
_HASH_CHUNK = 1 << 20
# Default upper bound on worker processes.
_MAX_DEFAULT_WORKERS = 8

TRAIN, VAL = "train", "val"


@dataclass(frozen=True)
class VideoProblem:
    """A video that cannot be used as it is.

    Attributes:
        split: ``"train"`` or ``"val"``.
        path: The video as listed.
        reason: Why (the decoder's message, or the frame count for short videos).
        num_frames: Frames in the video when it could be read, else None.
    """

    split: str
    path: str
    reason: str
    num_frames: int | None = None


@dataclass(frozen=True)
class Duplicate:
    """Entries of one list that are the same video.

    Attributes:
        split: ``"train"`` or ``"val"``.
        key: What they share: the resolved path, or the sha256 of the bytes.
        paths: The entries, as listed (a path listed three times appears three times).
    """

    split: str
    key: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Overlap:
    """A video in both the training and the validation list.

    Attributes:
        key: What they share: the file name, or the sha256 of the bytes.
        train: The training entries.
        val: The validation entries.
    """

    key: str
    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass
class ScanReport:
    """Result of :func:`scan_videos`; ``clean`` is True when nothing was found.

    Attributes:
        frames: Clip length that videos were checked against.
        num_videos: Entries in the training list.
        num_val_videos: Entries in the validation list (0 without one).
        num_readable: Entries (both lists) that could be read.
        unreadable: Entries that could not be read.
        too_short: Readable entries with fewer than ``frames`` frames.
        duplicate_paths: Files listed more than once in the same list.
        duplicate_content: Different files with the same bytes in the same list.
        name_overlap: File names in both lists.
        content_overlap: File contents in both lists.
        frame_stats: ``min``, ``median``, ``max`` frame count of the readable entries (empty if none).
    """

    frames: int
    num_videos: int
    num_val_videos: int = 0
    num_readable: int = 0
    unreadable: list[VideoProblem] = field(default_factory=list)
    too_short: list[VideoProblem] = field(default_factory=list)
    duplicate_paths: list[Duplicate] = field(default_factory=list)
    duplicate_content: list[Duplicate] = field(default_factory=list)
    name_overlap: list[Overlap] = field(default_factory=list)
    content_overlap: list[Overlap] = field(default_factory=list)
    frame_stats: dict[str, float] = field(default_factory=dict)

    @property
    def num_problems(self) -> int:
        """Number of reported items (videos, duplicate groups, overlaps)."""
        return (
            len(self.unreadable)
            + len(self.too_short)
            + len(self.duplicate_paths)
            + len(self.duplicate_content)
            + len(self.name_overlap)
            + len(self.content_overlap)
        )

    @property
    def clean(self) -> bool:
        return self.num_problems == 0

    def to_dict(self) -> dict:
        """JSON-ready dict of the whole report (plus ``clean`` and ``num_problems``)."""
        report = asdict(self)
        report.update(clean=self.clean, num_problems=self.num_problems)
        return report


@dataclass(frozen=True)
class _FileCheck:
    num_frames: int | None
    error: str | None
    size: int | None


def _check_file(path: str) -> _FileCheck:
    """Probe one file (frame count or decoding error) and stat its size."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    try:
        return _FileCheck(probe_video(path).num_frames, None, size)
    except VideoReadError as error:  # a finding; any other exception is a bug and propagates
        message = str(error) or type(error).__name__
        return _FileCheck(None, message.removeprefix(f"Cannot read video {path!r}: "), size)


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _run(function: Callable, items: Sequence, workers: int, desc: str, progress: bool | None) -> list:
    """``[function(x) for x in items]``, in worker processes when ``workers > 1``, with a progress bar."""
    bar = dict(total=len(items), desc=desc, unit="file", disable=None if progress is None else not progress)
    if workers <= 1 or len(items) < 2:
        return [function(item) for item in tqdm(items, **bar)]
    # Processes, not threads: counting packets is Python-level work that holds the GIL.
    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        chunksize = max(1, min(64, len(items) // (workers * 8)))
        return list(tqdm(pool.map(function, items, chunksize=chunksize), **bar))


def scan_videos(
    entries: Iterable[VideoEntry],
    *,
    frames: int = 16,
    val_entries: Iterable[VideoEntry] | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> ScanReport:
    """Check every video of a training list (and optionally a validation list).

    Each distinct file is probed once (a demux, no decoding; see
    :func:`larp.data.video_io.probe_video`) and files whose sizes collide are hashed.

    Args:
        entries: The training videos.
        frames: Clip length; readable videos with fewer frames are reported as too short.
        val_entries: The validation videos, checked the same way and against ``entries``.
        workers: Worker processes; 0 or 1 checks in this process. Default: the CPU count,
            at most 8.
        progress: Show progress bars: None (default) only on a terminal, or True / False.

    Returns:
        The :class:`ScanReport`.

    Raises:
        ValueError: ``frames < 1`` or ``workers < 0``.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if workers is None:
        workers = min(_MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    splits = {TRAIN: [e.path for e in entries], VAL: [e.path for e in (val_entries or [])]}
    report = ScanReport(frames=frames, num_videos=len(splits[TRAIN]), num_val_videos=len(splits[VAL]))

    # One check per distinct file: the same file may be listed many times, under several names.
    real = {path: os.path.realpath(path) for paths in splits.values() for path in paths}
    files = sorted(set(real.values()))
    checks = dict(zip(files, _run(_check_file, files, workers, "probe", progress)))

    counts = []
    for split, paths in splits.items():
        for path in paths:
            check = checks[real[path]]
            if check.error is not None:
                report.unreadable.append(VideoProblem(split, path, check.error))
                continue
            report.num_readable += 1
            counts.append(check.num_frames)
            if check.num_frames < frames:
                reason = f"{check.num_frames} frames, fewer than {frames}"
                report.too_short.append(VideoProblem(split, path, reason, check.num_frames))
    if counts:
        report.frame_stats = {"min": min(counts), "median": statistics.median(counts), "max": max(counts)}

    # Same file listed twice in one list.
    for split, paths in splits.items():
        listed = defaultdict(list)
        for path in paths:
            listed[real[path]].append(path)
        report.duplicate_paths += [Duplicate(split, key, tuple(p)) for key, p in listed.items() if len(p) > 1]

    # Same bytes: only files sharing a size can be identical, so only those are hashed.
    by_size = defaultdict(list)
    for file in files:
        if checks[file].size is not None:
            by_size[checks[file].size].append(file)
    candidates = {file for group in by_size.values() if len(group) > 1 for file in group}
    # a file in both lists (maybe under different names) is a content overlap too
    candidates |= {real[p] for p in splits[TRAIN]} & {real[p] for p in splits[VAL]}
    candidates = sorted(f for f in candidates if checks[f].size is not None)
    digests = dict(zip(candidates, _run(_sha256, candidates, workers, "sha256", progress)))
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: {TRAIN: [], VAL: []})  # sha -> split -> paths
    for split, paths in splits.items():
        for path in paths:
            digest = digests.get(real[path])
            if digest is not None:
                groups[digest][split].append(path)
    for digest, members in groups.items():
        for split, paths in members.items():
            if len({real[p] for p in paths}) > 1:  # distinct files; repeats of one file are duplicate_paths
                report.duplicate_content.append(Duplicate(split, digest, tuple(paths)))
        if members[TRAIN] and members[VAL]:
            report.content_overlap.append(Overlap(digest, tuple(members[TRAIN]), tuple(members[VAL])))

    # Same file name in both lists.
    names: dict[str, dict[str, list[str]]] = defaultdict(lambda: {TRAIN: [], VAL: []})
    for split, paths in splits.items():
        for path in paths:
            names[os.path.basename(path)][split].append(path)
    report.name_overlap = [
        Overlap(name, tuple(m[TRAIN]), tuple(m[VAL])) for name, m in sorted(names.items()) if m[TRAIN] and m[VAL]
    ]
    logger.debug("scan: %d files probed, %d hashed", len(files), len(candidates))
    return report
