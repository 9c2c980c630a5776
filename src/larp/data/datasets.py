"""Video files for training: manifests, folders of videos, and a clip dataset.

* :func:`read_manifest` reads a csv list of videos in the official LARP format
  (``data/metadata/*.csv``: a header with at least a ``path`` column; the released lists
  have ``id,path,action,label``).
* :func:`find_videos` lists the videos under a folder; the class is the parent folder.
* :func:`load_entries` does either, depending on what it is given;
  :func:`load_existing_entries` also leaves out (and reports) the listed files that do not exist.
* :class:`VideoClipDataset` returns one clip per video per access, as the official training
  pipeline does (LARP.md C.1 / E.6): a random start among the valid ones, consecutive frames
  at the native frame rate, replicate-padding of short videos, short-side resize + centre
  crop, and a random horizontal flip of the whole clip.
* :func:`collate_skipping_none` drops the videos that could not be decoded, counts them and
  keeps their reasons (:class:`SkippedVideo`), so they reach the main process from workers.

Only decoding errors (:class:`~larp.data.video_io.VideoReadError`) skip a video; any other
exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from larp.data.video_io import VideoReadError, probe_video, read_video

__all__ = [
    "VIDEO_EXTENSIONS",
    "SkippedVideo",
    "VideoClipDataset",
    "VideoEntry",
    "collate_skipping_none",
    "find_videos",
    "load_entries",
    "load_existing_entries",
    "read_manifest",
    "ucf101_action",
]

logger = logging.getLogger(__name__)

#: File suffixes (lower case) that :func:`find_videos` treats as videos.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv", ".3gp",
)  # fmt: skip

# UCF-101 file names: v_<Action>_g<group>_c<clip>, e.g. v_ApplyEyeMakeup_g08_c01.avi.
_UCF101_NAME = re.compile(r"^v_([^_]+)_g\d+_c\d+$")
# Number of classes of UCF-101; a list of UCF videos with fewer actions gets other label numbers.
_UCF101_CLASSES = 101
# Folders tried, in order, for the relative paths of a manifest when no root is given:
# the csv's folder, then up to this many levels above it (the official csvs live in
# data/metadata/ and name videos data/ucf101/..., relative to the repository root).
_MANIFEST_PARENT_LEVELS = 2
# Rows of a manifest whose existence is checked to choose that folder.
_MANIFEST_PROBE_ROWS = 32
# Missing files named in the error / warning of :func:`load_existing_entries`.
_MISSING_EXAMPLES = 3


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset.

    Attributes:
        path: The video file (absolute when it came from :func:`read_manifest` or
            :func:`find_videos`).
        label: Class index, or -1 when unknown.
        action: Class name when known (the manifest's ``action`` column, or the folder name).
    """

    path: str
    label: int = -1
    action: str | None = None


@dataclass(frozen=True)
class SkippedVideo:
    """A video of a :class:`VideoClipDataset` that could not be decoded (picklable: it crosses workers).

    Attributes:
        index: The item's index in the dataset.
        path: The file.
        reason: Why, without the file name (e.g. ``"Invalid data found when processing input"``).
    """

    index: int
    path: str
    reason: str


def ucf101_action(path: str | os.PathLike) -> str | None:
    """The action of a UCF-101 file name (``v_<Action>_gXX_cYY``), or None if it is not one."""
    match = _UCF101_NAME.match(Path(path).stem)
    return match.group(1) if match else None


def _resolve_base(csv_path: Path, relative: list[str]) -> Path:
    """Folder that the relative paths of a manifest are relative to (see :func:`read_manifest`)."""
    here = csv_path.parent.resolve()
    candidates = [here, *list(here.parents)[:_MANIFEST_PARENT_LEVELS], Path.cwd()]
    sample = relative[:_MANIFEST_PROBE_ROWS]
    for base in candidates:
        if any((base / p).exists() for p in sample):
            if base != here:
                logger.info(
                    "%s: relative paths resolved against %s (where they exist; pass root= to choose)", csv_path, base
                )
            return base
    return here  # none exist anywhere: report them missing where the csv is


def read_manifest(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[VideoEntry]:
    """Read a csv list of videos in the official LARP format.

    The official lists (``data/metadata/ucf101_train.csv`` etc.) look like::

        id,path,action,label
        0,data/ucf101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi,ApplyEyeMakeup,0
        1,data/k600/val/Zv09PB3YQAs_000010_000020.mp4,abseiling,0

    Only ``path`` is required (the official loader reads ``path``, and ``label``/``action``
    when present); other columns are ignored. Labels come from the ``label`` column when
    there is one (empty cells give -1). Without it, a list whose file names all follow the
    UCF-101 pattern ``v_<Action>_gXX_cYY`` gets the official UCF-101 labels: the position of
    the action in the case-sensitive sorted list of action names (so ``HammerThrow`` comes
    before ``Hammering``; LARP.md D.2). Otherwise labels are -1.

    Rows keep the file's order; the official dataset sorts its list by path, which
    ``sorted(entries, key=lambda e: e.path)`` reproduces (all paths share the root prefix).

    Args:
        csv_path: The csv file (utf-8, optionally with a BOM).
        root: Folder that relative paths are relative to. Default: the csv's folder; when
            none of the first rows exist there, the first of (the csv's parent, its
            grandparent, the current directory) where some of them exist. This makes the
            official layout (csv in ``data/metadata/``, paths ``data/...`` relative to the
            repository root) work without a root. Absolute paths are used as they are.

    Returns:
        One :class:`VideoEntry` per row with absolute, normalised paths.

    Raises:
        FileNotFoundError: The csv does not exist.
        ValueError: The csv has no ``path`` column, an empty path, or a label that is not
            an integer.
    """
    return _read_manifest(csv_path, root)[0]


def _read_manifest(csv_path: str | os.PathLike, root: str | os.PathLike | None) -> tuple[list[VideoEntry], Path | None]:
    """:func:`read_manifest`, and the folder its relative paths were resolved against (None: all absolute)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest {str(csv_path)!r} not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in columns:
            raise ValueError(f"manifest {str(csv_path)!r} has no 'path' column (columns: {columns})")
        reader.fieldnames = columns  # tolerate spaces around header names
        rows = list(reader)

    paths, labels, actions = [], [], []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        path = (row.get("path") or "").strip()
        if not path:
            raise ValueError(f"{csv_path}:{line}: empty path")
        paths.append(path)
        actions.append((row.get("action") or "").strip() or None)
        text = (row.get("label") or "").strip()
        try:
            labels.append(int(float(text)) if text else -1)  # pandas writes ints of float columns as 3.0
        except ValueError:
            raise ValueError(f"{csv_path}:{line}: label {text!r} is not an integer") from None

    if "label" not in columns and paths:
        names = [ucf101_action(p) for p in paths]
        if all(names):
            order = sorted(set(names))  # case-sensitive, as the official code
            if len(order) != _UCF101_CLASSES:
                logger.warning(
                    "%s: UCF-101 file names with %d actions (the full dataset has %d): labels are their "
                    "positions among these actions, not the official UCF-101 label numbers",
                    csv_path, len(order), _UCF101_CLASSES,
                )  # fmt: skip
            index = {action: i for i, action in enumerate(order)}
            labels = [index[name] for name in names]
            actions = [a or name for a, name in zip(actions, names)]

    relative = [p for p in paths if not os.path.isabs(p)]
    base = Path(root).resolve() if root is not None else (_resolve_base(csv_path, relative) if relative else None)
    entries = [
        VideoEntry(os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p)), label, action)
        for p, label, action in zip(paths, labels, actions)
    ]
    return entries, base


def find_videos(folder: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[VideoEntry]:
    """All videos under ``folder`` (recursively, following links), sorted by path.

    The label of a video is the index of its parent folder's name in the sorted
    (case-sensitive) list of parent-folder names, and its action is that name; videos lying
    directly in ``folder`` get -1. For the UCF-101 layout (``UCF-101/<Action>/v_<Action>_...``)
    this is the official label numbering. Hidden files and folders (``.name``) are skipped.

    Args:
        folder: The folder to search.
        extensions: Suffixes that count as videos (compared case-insensitively).

    Returns:
        The videos as :class:`VideoEntry` with absolute paths.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    top = Path(folder).resolve()
    if not top.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} is not a folder")
    suffixes = tuple(e.lower() for e in extensions)
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for current, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(current)
        if real in seen_dirs:  # a link loop: walked already
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(current, f) for f in files if not f.startswith(".") and f.lower().endswith(suffixes))
    found.sort()
    classes = sorted({p.parent.name for p in found if p.parent != top})
    index = {name: i for i, name in enumerate(classes)}
    return [
        VideoEntry(str(p), index[p.parent.name], p.parent.name) if p.parent != top else VideoEntry(str(p))
        for p in found
    ]


def load_entries(source: str | os.PathLike, root: str | os.PathLike | None = None) -> list[VideoEntry]:
    """Videos from a csv manifest (:func:`read_manifest`) or a folder (:func:`find_videos`).

    Args:
        source: A manifest file or a folder of videos.
        root: For a manifest, the folder its relative paths are relative to; ignored for a folder.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` is a file that is not a usable manifest.
    """
    return _load(source, root)[0]


def _load(source: str | os.PathLike, root: str | os.PathLike | None) -> tuple[list[VideoEntry], str]:
    """:func:`load_entries`, and where the videos were looked for (``"under FOLDER"``, for messages)."""
    path = Path(source)
    if path.is_dir():
        return find_videos(path), f"under {path}"
    if not path.exists():
        raise FileNotFoundError(f"{str(source)!r} does not exist (expected a .csv manifest or a folder of videos)")
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        raise ValueError(f"{str(source)!r} is a video; expected a .csv manifest or a folder of videos")
    entries, base = _read_manifest(path, root)
    return entries, f"under {base}" if base is not None else "(absolute paths in the manifest)"


def load_existing_entries(
    source: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[list[VideoEntry], int]:
    """:func:`load_entries`, less the videos whose file does not exist, checked up front.

    Only existence is checked (``os.path.exists``, no decoding), so this is fast for long lists.
    A wrong root (every file missing) is an error at once rather than a training run that
    skips every video; a few missing files give one warning (the count and the first few
    paths) and are left out.

    Args:
        source: A manifest file or a folder of videos.
        root: For a manifest, the folder its relative paths are relative to.

    Returns:
        ``(entries, missing)``: the videos whose file exists, in order, and how many were left out.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` lists no video, every listed file is missing, or it is not a
            usable manifest.
    """
    entries, where = _load(source, root)
    if not entries:
        if Path(source).is_dir():
            raise ValueError(f"no videos under the folder {str(source)!r} (suffixes: {' '.join(VIDEO_EXTENSIONS)})")
        raise ValueError(f"the manifest {str(source)!r} lists no videos")
    exists = [os.path.exists(entry.path) for entry in entries]
    present = [entry for entry, found in zip(entries, exists) if found]
    missing = [entry.path for entry, found in zip(entries, exists) if not found]
    examples = ", ".join(missing[:_MISSING_EXAMPLES])
    if not present:
        raise ValueError(
            f"all {len(entries)} videos of {str(source)!r} are missing {where}: {examples}; "
            "pass the folder its paths are relative to as data.root (--set data.root=DIR, or --root where a command has it)"
        )
    if missing:
        logger.warning(
            "%d of the %d videos of %s are missing %s and are left out (counted as skipped): %s%s",
            len(missing), len(entries), source, where, examples, ", ..." if len(missing) > _MISSING_EXAMPLES else "",
        )  # fmt: skip
    return present, len(missing)


class VideoClipDataset(Dataset):
    """One clip per video per access, decoded from files, as the official training pipeline.

    For item ``i`` the clip is frames ``start, start + stride, ...`` (``frames`` of them) of
    ``entries[i]``, resized (short side to ``size``, antialiased) and centre-cropped to
    ``size x size``, then flipped horizontally with probability 0.5 when ``random_flip``.
    ``start`` is drawn uniformly among the starts whose clip fits in the video
    (``clip="random"``) or is 0 (``clip="start"``). Randomness comes from torch's global RNG,
    which DataLoader seeds per worker from the main process's RNG, so
    ``torch.manual_seed(...)`` before iterating makes a run reproducible (per rank).

    Videos shorter than a clip are padded by repeating their last frame (the official
    behaviour) unless ``pad_short=False``, in which case they are skipped like unreadable ones.

    A video that cannot be decoded (a :class:`~larp.data.video_io.VideoReadError`: missing,
    corrupt, not a video, or too short without padding) does not stop training: the item is
    ``None`` (:meth:`fetch` returns a :class:`SkippedVideo` with the reason instead) and a
    warning names the file and the reason (once per file and worker process; later failures
    of the same file are logged at debug level). Any other exception is a bug and propagates.
    Use :func:`collate_skipping_none` as the DataLoader's ``collate_fn`` to drop and count them.

    Frame counts are probed once per video (a demux, no decoding) and cached in the dataset
    object, i.e. per worker process; ``persistent_workers=True`` keeps the cache across epochs.

    Args:
        entries: The videos.
        frames: Frames per clip.
        size: Output side length in pixels.
        stride: Step between frames (1 = native frame rate, as the official training).
        random_flip: Flip the whole clip left-right with probability 0.5.
        clip: ``"random"`` start or ``"start"`` of the video.
        pad_short: Pad short videos by repeating their last frame (else skip them).
        missing: Videos of the source list already left out because their file did not exist
            (:func:`load_existing_entries`); a training stream counts them as skipped.

    Items are ``{"video": (3, frames, size, size) float32 in [0, 1], "label": int,
    "index": int, "path": str}``, or ``None``.
    """

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        *,
        frames: int = 16,
        size: int = 128,
        stride: int = 1,
        random_flip: bool = True,
        clip: str = "random",
        pad_short: bool = True,
        missing: int = 0,
    ) -> None:
        for name, value in (("frames", frames), ("size", size), ("stride", stride)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if clip not in ("random", "start"):
            raise ValueError(f"clip must be 'random' or 'start', got {clip!r}")
        self.entries = list(entries)
        self.frames, self.size, self.stride = frames, size, stride
        self.random_flip, self.clip, self.pad_short = bool(random_flip), clip, bool(pad_short)
        self.missing = int(missing)
        self._frame_counts: dict[str, int] = {}
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def span(self) -> int:
        """Frames of the video that one clip covers: ``(frames - 1) * stride + 1``."""
        return (self.frames - 1) * self.stride + 1

    def num_frames(self, index: int) -> int:
        """Frame count of video ``index`` (probed once, then cached).

        Raises:
            VideoReadError: The video cannot be read.
        """
        path = self.entries[index].path
        count = self._frame_counts.get(path)
        if count is None:
            count = self._frame_counts[path] = probe_video(path).num_frames
        return count

    def __getitem__(self, index: int) -> dict | None:
        item = self.fetch(index)
        return None if isinstance(item, SkippedVideo) else item

    def fetch(self, index: int) -> dict | SkippedVideo:
        """Item ``index``, or a :class:`SkippedVideo` (logged) when its video cannot be decoded.

        Only :class:`~larp.data.video_io.VideoReadError` is caught: any other error is a bug.
        """
        entry = self.entries[index]
        try:
            available = self.num_frames(index)
            if available < self.span and not self.pad_short:
                raise VideoReadError(f"too short: {available} frames, a clip needs {self.span}")
            start = 0
            if self.clip == "random":
                start = int(torch.randint(max(available - self.span, 0) + 1, ()).item())
            video = read_video(
                entry.path, start=start, num_frames=self.frames, stride=self.stride, size=self.size, pad=self.pad_short
            )
        except VideoReadError as error:  # one bad file must not end a long run
            return self._report(index, entry.path, error)
        if self.random_flip and torch.rand(()).item() < 0.5:
            video = video.flip(-1)
        return {"video": video, "label": entry.label, "index": index, "path": entry.path}

    def _report(self, index: int, path: str, error: VideoReadError) -> SkippedVideo:
        """Log a video that cannot be decoded (a warning the first time per file and process)."""
        reason = str(error) or type(error).__name__
        # the message already names the file: keep only the reason
        for prefix in (f"Cannot read video {path!r}: ", f"Video {path!r} is "):
            reason = reason.removeprefix(prefix)
        level = logging.DEBUG if path in self._warned else logging.WARNING
        self._warned.add(path)
        logger.log(level, "skipping video %s: %s", path, reason)
        return SkippedVideo(index, path, reason)


def collate_skipping_none(batch: Sequence[dict | SkippedVideo | None]) -> dict:
    """DataLoader ``collate_fn`` that drops the videos :class:`VideoClipDataset` could not decode.

    Args:
        batch: Items, some of which may be ``None`` or :class:`SkippedVideo` (videos that could
            not be decoded).

    Returns:
        ``default_collate`` of the remaining items (``"video"`` ``(b, 3, t, s, s)``,
        ``"label"`` ``(b,)``, ``"index"`` ``(b,)``, ``"path"`` list of ``b`` str) plus
        ``"skipped"``: the number of items dropped (a plain int), and ``"failures"``: the
        dropped :class:`SkippedVideo` records (the reasons, which this way reach the main
        process from DataLoader workers; ``None`` items carry none). When every item was
        dropped the result has only these two keys, without ``"video"``: check
        ``"video" in batch`` before using it.
    """
    failures = [item for item in batch if isinstance(item, SkippedVideo)]
    items = [item for item in batch if item is not None and not isinstance(item, SkippedVideo)]
    skipped = len(batch) - len(items)
    if not items:
        return {"skipped": skipped, "failures": failures}
    collated = default_collate(items)
    collated["skipped"] = skipped
    collated["failures"] = failures
    return collated
