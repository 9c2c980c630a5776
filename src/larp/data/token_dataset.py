"""Token datasets: the one on-disk format for LARP tokens in the project (sharded Parquet + ``_dataset.json``).

A dataset is a folder::

    DATASET/_dataset.json           what made it (tokenizer + fingerprint, windows, counts, special tokens)
    DATASET/shard-00000.parquet     one row per video (or per clip, for a generator's token cache)
    DATASET/shard-00001.parquet     ...
    DATASET/_failed.jsonl           videos that could not be decoded: {"video", "reason"}

The two side files start with ``_`` (like Spark's ``_SUCCESS`` and Parquet's ``_metadata``) because every
Parquet reader skips such names when it lists a folder: ``pyarrow.parquet.read_table(DATASET)``,
``pandas.read_parquet(DATASET)`` and ``datasets.load_dataset(DATASET)`` read the shards and nothing else.
(Datasets written by larp 0.2 development versions named them ``dataset.json`` / ``failed.jsonl``; they are
still read.)

The Parquet columns (:func:`dataset_schema`): ``video`` (the manifest path), ``label`` (int64, null when
unknown), ``tokens`` (every window's ids, flat; uint16 when the codebook fits, else int32),
``window_lengths`` (ids per window), ``num_windows``, ``fps``, ``start``, ``pad_frames``, ``source_fps``,
``source_frames``, ``source_width``, ``source_height``; optionally ``cond_tokens`` (frame-prediction condition
ids, flat like ``tokens``) and ``flipped`` (a mirrored clip). Any Parquet reader reads the shards
(``pyarrow``, pandas, polars, HF ``datasets``);
:class:`TokenWindows` serves each window as a training sample.

**Adaptive lengths** (:mod:`larp.budget`, a nested-dropout tokenizer): ``write_token_dataset(...,
target_psnr=...)`` (or ``target_mse``, ``target_lpips``, ``mean_tokens``: a budget per shard) keeps only each
window's first ``k`` ids: ``tokens`` holds the valid ids only (``sum(window_lengths)`` of them) and
``_dataset.json`` records the ``budget`` policy and the ``mean_tokens`` per window reached.

:func:`write_token_dataset` tokenizes a list of videos into such a folder: shards are fixed chunks of the list,
written atomically, so a killed run resumes (finished shards kept) and any number of ``torchrun`` ranks give
the same rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm import tqdm

from larp.data.datasets import VideoEntry
from larp.data.video_io import VideoReadError
from larp.data.windows import VideoWindows, WindowPlan
from larp.files import FolderLock, read_jsonl, write_atomic, write_json_atomic, write_text_atomic
from larp.models.tokenizer import LARPTokenizer
from larp.precision import resolve_precision
from larp.training.distributed import DistInfo, barrier, gather_objects
from larp.training.token_cache import tokenizer_fingerprint
from larp.budget import (
    POLICIES,
    POOLED,
    allocate_pooled,
    budget_option,
    choose_lengths,
    encode_with_curves,
    resolve_policy,
)
from larp.video_tokens import budget_policy, encode_windows

__all__ = [
    "FAILED_NAME",
    "FORMAT",
    "INFO_NAME",
    "SPECIAL_TOKENS",
    "TokenWindows",
    "dataset_schema",
    "info_path",
    "is_token_dataset",
    "read_dataset_info",
    "read_rows",
    "shard_name",
    "shard_paths",
    "token_type",
    "write_dataset_info",
    "write_shard",
    "write_token_dataset",
]

FORMAT = "larp-token-dataset"
VERSION = 1
INFO_NAME = "_dataset.json"
FAILED_NAME = "_failed.jsonl"
PROGRESS_DIR = ".progress"  # per-shard failed lists: a shard is finished when its list and its Parquet exist
_LEGACY_INFO_NAME = "dataset.json"  # larp 0.2 development versions; read, never written
_SHARD_GLOB = "shard-*.parquet"
_UINT16_CODES = 1 << 16

#: A suggested map for adding the tokens to an LLM's vocabulary: a video is ``video_start``, its windows'
#: codes (``code_pattern`` of each id) separated by ``window_sep``, then ``video_end``.
SPECIAL_TOKENS = {"video_start": "<|video_start|>", "video_end": "<|video_end|>", "window_sep": "<|window|>",
                  "code_pattern": "<|v{id}|>"}

# Scalar columns: name -> type (all nullable; a row may leave them out).
_SCALARS: dict[str, pa.DataType] = {
    "num_windows": pa.int32(),
    "fps": pa.float64(),
    "start": pa.float64(),
    "pad_frames": pa.int32(),
    "source_fps": pa.float64(),
    "source_frames": pa.int64(),
    "source_width": pa.int32(),
    "source_height": pa.int32(),
}


# ------------------------------------------------------------------------------------------ format
def token_type(codebook_size: int) -> pa.DataType:
    """The Parquet type of one id: uint16 when every id fits (codebook <= 65536), int32 otherwise."""
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size must be an integer >= 1, got {codebook_size!r}")
    return pa.uint16() if codebook_size <= _UINT16_CODES else pa.int32()


def dataset_schema(codebook_size: int, *, cond: bool = False, flipped: bool = False) -> pa.Schema:
    """The columns of a shard (``cond``: with ``cond_tokens``; ``flipped``: with ``flipped``)."""
    ids = pa.list_(token_type(codebook_size))
    fields = [pa.field("video", pa.string()), pa.field("label", pa.int64()), pa.field("tokens", ids),
              pa.field("window_lengths", pa.list_(pa.int32()))]
    fields += [pa.field(name, kind) for name, kind in _SCALARS.items()]
    if cond:
        fields.append(pa.field("cond_tokens", ids))
    if flipped:
        fields.append(pa.field("flipped", pa.bool_()))
    return pa.schema(fields)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def shard_paths(folder: str | os.PathLike) -> list[Path]:
    """The finished shards of ``folder``, in name order (temporary files of unfinished writes are hidden)."""
    return sorted(Path(folder).glob(_SHARD_GLOB))


def _id_column(values: list[np.ndarray], codebook_size: int, column: str, path: Path) -> pa.Array:
    flat = np.concatenate(values) if values else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= codebook_size):
        raise ValueError(f"{path}: {column} holds ids outside [0, {codebook_size}) "
                         f"(min {flat.min()}, max {flat.max()})")
    dtype = np.uint16 if codebook_size <= _UINT16_CODES else np.int32
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"{path}: {offsets[-1]} ids in one shard; write fewer videos per shard")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat.astype(dtype)),
                                    type=pa.list_(token_type(codebook_size)))


def write_shard(path: str | os.PathLike, rows: list[dict[str, Any]], codebook_size: int) -> None:
    """Write ``rows`` as one Parquet shard, atomically (a reader never sees a half-written shard).

    Each row is a dict of the columns (:func:`dataset_schema`): ``video``, ``label`` (None or < 0: unknown),
    ``tokens`` (any int sequence or array, flat), ``window_lengths`` (default: one window of all the tokens);
    the scalar columns may be left out (null). ``cond_tokens`` and ``flipped`` are written when a row has them
    (then every row must). An empty ``rows`` writes a shard of no row with the full schema.

    Raises:
        ValueError: ids outside the codebook, window lengths that do not add up to the tokens, or an optional
            column given for some rows only.
    """
    path = Path(path)
    tokens = [np.asarray(row["tokens"]).reshape(-1).astype(np.int64, copy=False) for row in rows]
    lengths = []
    for i, (row, ids) in enumerate(zip(rows, tokens)):
        given = row.get("window_lengths")
        length = [len(ids)] if given is None else [int(n) for n in given]
        if sum(length) != len(ids):
            raise ValueError(f"{path}: row {i} ({row.get('video')}): window_lengths add up to {sum(length)}, "
                             f"the row has {len(ids)} tokens")
        lengths.append(length)
    has = {name: [name in row and row[name] is not None for row in rows] for name in ("cond_tokens", "flipped")}
    for name, present in has.items():
        if any(present) and not all(present):
            raise ValueError(f"{path}: {name} is given for some rows only")
    cond, flipped = bool(rows) and all(has["cond_tokens"]), bool(rows) and all(has["flipped"])
    schema = dataset_schema(codebook_size, cond=cond, flipped=flipped)
    labels = [row.get("label") for row in rows]
    columns: dict[str, pa.Array] = {
        "video": pa.array([str(row["video"]) for row in rows], pa.string()),
        "label": pa.array([None if label is None or int(label) < 0 else int(label) for label in labels], pa.int64()),
        "tokens": _id_column(tokens, codebook_size, "tokens", path),
        "window_lengths": pa.array(lengths, pa.list_(pa.int32())),
    }
    for name, kind in _SCALARS.items():
        values = [row.get(name) for row in rows]
        if name == "num_windows":
            values = [len(n) if v is None else v for v, n in zip(values, lengths)]
        columns[name] = pa.array(values, kind)
    if cond:
        cond_ids = [np.asarray(row["cond_tokens"]).reshape(-1).astype(np.int64, copy=False) for row in rows]
        columns["cond_tokens"] = _id_column(cond_ids, codebook_size, "cond_tokens", path)
    if flipped:
        columns["flipped"] = pa.array([bool(row["flipped"]) for row in rows], pa.bool_())
    table = pa.table([columns[field.name] for field in schema], schema=schema)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def info_path(folder: str | os.PathLike) -> Path | None:
    """The description file of the token dataset ``folder`` (``_dataset.json``, or the legacy ``dataset.json``),
    None when there is neither."""
    for name in (INFO_NAME, _LEGACY_INFO_NAME):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def is_token_dataset(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a token dataset's description (complete or not)."""
    return info_path(folder) is not None


def read_dataset_info(folder: str | os.PathLike) -> dict[str, Any]:
    """``FOLDER/_dataset.json``.

    Raises:
        FileNotFoundError: there is none (not a token dataset).
        ValueError: it is not JSON, or not of this format.
    """
    path = info_path(folder)
    if path is None:
        raise FileNotFoundError(f"{folder} is not a token dataset: no {INFO_NAME} there "
                                f"(`larp tokenize --manifest ... -o {folder}` writes one)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise ValueError(f"{path} is not a {FORMAT} description (format {found!r})")
    if int(info.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: format version {info['version']} is newer than this larp reads ({VERSION}); "
                         f"upgrade larp")
    return info


def write_dataset_info(folder: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write ``FOLDER/_dataset.json`` atomically (``format`` and ``version`` filled in when absent)."""
    write_json_atomic(Path(folder) / INFO_NAME, {"format": FORMAT, "version": VERSION, **info})


def read_rows(folder: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Every row of every shard of ``folder``, shards in name order, as one table.

    ``columns`` selects columns; an optional one that a shard lacks comes back null for its rows.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"token dataset {folder} not found")
    tables = []
    for path in shard_paths(folder):
        try:
            names = pq.read_schema(path).names
            wanted = None if columns is None else [c for c in columns if c in names]
            tables.append(pq.read_table(path, columns=wanted))
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"cannot read the token dataset shard {path}: {error}") from None
    if not tables:
        try:
            codebook = int(read_dataset_info(folder).get("codebook_size") or _UINT16_CODES)
        except (OSError, ValueError):
            codebook = _UINT16_CODES
        schema = dataset_schema(codebook)
        table = schema.empty_table()
        return table if columns is None else table.select([c for c in columns if c in schema.names])
    table = pa.concat_tables(tables, promote_options="default")
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    """The values of a list column, every row's in order, as one numpy array."""
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False)


class TokenWindows(Dataset):
    """Every window of a token dataset as a sample: ``{"tokens": LongTensor (N,), "length": int, "label": int}``.

    ``length`` is the window's number of ids. An adaptive dataset (its ``_dataset.json`` has a ``budget``,
    :mod:`larp.budget`, or ``variable_lengths=True``) stores only each window's first ``length`` ids: every
    window is served, ``tokens`` padded with ``-1`` past its length. A fixed-length dataset serves its full
    windows only (``length`` = ``N``; a shorter window, such as a partial last one, is no sample). ``label`` is
    -1 when unknown. ``"cond"`` (N,) is added when the dataset has condition tokens: stored like ``tokens``
    (the same lengths, padded alike) or full length, ``N`` per window.

    All ids are loaded into memory (numpy, at their stored width). A window of more than ``tokens_per_window``
    ids is an error naming the folder.
    """

    def __init__(self, folder: str | os.PathLike, *, variable_lengths: bool | None = None):
        self.folder = Path(folder)
        self.info = read_dataset_info(self.folder)
        tokens_per_window = self.info.get("tokens_per_window")
        if not isinstance(tokens_per_window, int) or tokens_per_window < 1:
            raise ValueError(f"{self.folder / INFO_NAME}: tokens_per_window is {tokens_per_window!r}")
        self.tokens_per_window = n = tokens_per_window
        table = read_rows(self.folder, ["label", "tokens", "window_lengths", "cond_tokens"])
        tokens = _flat(table.column("tokens"))
        lengths = _flat(table.column("window_lengths")).astype(np.int64)
        if lengths.sum() != tokens.size:
            raise ValueError(f"{self.folder}: the window lengths add up to {lengths.sum()} ids, the shards hold "
                             f"{tokens.size}: a shard is damaged")
        if lengths.size and lengths.max() > n:
            raise ValueError(f"{self.folder}: window lengths up to {lengths.max()}; expected at most "
                             f"tokens_per_window ({n})")
        self.variable_lengths = bool(self.info.get("budget")) if variable_lengths is None else variable_lengths
        per_row = table.column("window_lengths").combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
        per_row = np.nan_to_num(per_row.astype(np.float64)).astype(np.int64)  # a null list has no window
        row_of_window = np.repeat(np.arange(len(per_row)), per_row)
        labels = table.column("label").to_numpy(zero_copy_only=False)
        labels = np.where(np.isnan(labels.astype(np.float64)), -1, labels).astype(np.int64)
        served = lengths >= 1 if self.variable_lengths else lengths == n
        starts = np.cumsum(lengths) - lengths
        self._tokens = tokens
        self._starts = starts[served]
        self._lengths = lengths[served]
        self._windows = np.flatnonzero(served)  # index among all stored windows (full-length condition ids)
        self._labels = labels[row_of_window[served]]
        self._cond: np.ndarray | None = None
        self._cond_full = False  # condition ids stored N per window (not at the window's length)
        if "cond_tokens" in table.column_names and table.column("cond_tokens").null_count < table.num_rows:
            if table.column("cond_tokens").null_count:
                raise ValueError(f"{self.folder}: some rows have condition tokens (cond_tokens) and some not")
            cond = _flat(table.column("cond_tokens"))
            if cond.size != tokens.size:
                if cond.size != n * lengths.size:
                    raise ValueError(f"{self.folder}: cond_tokens hold {cond.size} ids, tokens {tokens.size} in "
                                     f"{lengths.size} windows (expected as many, or {n} per window)")
                self._cond_full = True
            self._cond = cond
        codebook = self.info.get("codebook_size")
        if tokens.size and isinstance(codebook, int) and int(tokens.max()) >= codebook:
            raise ValueError(f"{self.folder}: ids up to {int(tokens.max())} in a codebook of {codebook}")

    @property
    def lengths(self) -> np.ndarray:
        """(windows,) the number of ids of every window."""
        return self._lengths

    def __len__(self) -> int:
        return len(self._starts)

    def _padded(self, values: np.ndarray, start: int, length: int) -> torch.Tensor:
        out = np.full(self.tokens_per_window, -1, dtype=np.int64)
        out[:length] = values[start : start + length]
        return torch.from_numpy(out)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        index = index % len(self)
        start, length = int(self._starts[index]), int(self._lengths[index])
        item = {"tokens": self._padded(self._tokens, start, length), "length": length,
                "label": int(self._labels[index])}
        if self._cond is not None:
            n = self.tokens_per_window
            item["cond"] = (self._padded(self._cond, int(self._windows[index]) * n, n) if self._cond_full
                            else self._padded(self._cond, start, length))
        return item


# ------------------------------------------------------------------------------------------ writing
class _ShardVideos(IterableDataset):
    """Decodes videos (in worker processes) into messages for :func:`write_token_dataset`:
    ``("windows", key, (k, 3, T, S, S), None)`` chunks in order, then ``("done", key, None, info)``, or
    ``("failed", key, None, reason)`` for a video that cannot be decoded. Worker ``w`` takes every
    ``num_workers``-th video."""

    def __init__(self, items: list[tuple[int, str]], plan: WindowPlan, chunk: int):
        self.items, self.plan, self.chunk = items, plan, chunk

    def __iter__(self) -> Iterator[tuple]:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for key, path in self.items[first::step]:
            try:
                windows = VideoWindows(path, self.plan)
                chunk: list[torch.Tensor] = []
                for window in windows:
                    chunk.append(window)
                    if len(chunk) == self.chunk:
                        yield "windows", key, torch.stack(chunk), None
                        chunk = []
                if chunk:
                    yield "windows", key, torch.stack(chunk), None
                yield "done", key, None, windows.info.to_dict()
            except VideoReadError as error:
                yield "failed", key, None, str(error)


def _failed_name(shard: int) -> str:
    """The failed list of one shard, merged into ``_failed.jsonl`` at the end. It lives in a hidden folder, which
    Parquet readers and HF ``datasets`` skip, so that the JSON lines of many shards never outnumber the shards
    (HF picks a folder's format by its most common file extension)."""
    return f"{PROGRESS_DIR}/failed-{shard:05d}.jsonl"


def _shard_finished(out: Path, shard: int) -> bool:
    return (out / shard_name(shard)).is_file() and (out / _failed_name(shard)).is_file()


def _entries_digest(entries: Sequence[VideoEntry]) -> str:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(json.dumps([entry.path, entry.label]).encode())
    return digest.hexdigest()


def _check_existing(out: Path, settings: dict[str, Any]) -> str | None:
    """Why ``out`` cannot take this run (None: it can: new, or the same settings)."""
    if is_token_dataset(out):
        try:
            stored = read_dataset_info(out).get("settings") or {}
        except (OSError, ValueError) as error:
            return f"{error}: choose another output folder"
        differ = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in settings.items() if stored.get(k) != v]
        if differ:
            return (f"{out} holds a token dataset made with other settings ({'; '.join(differ)}): rerun with the "
                    f"same settings to resume it, or choose another output folder")
    elif shard_paths(out):
        return f"{out} holds Parquet shards but no {INFO_NAME}: not a larp token dataset; choose another output folder"
    return None


def write_token_dataset(
    entries: Sequence[VideoEntry],
    tokenizer: LARPTokenizer,
    out: str | os.PathLike,
    plan: WindowPlan,
    *,
    videos_per_shard: int = 256,
    batch_size: int = 8,
    num_workers: int = 2,
    precision: str = "auto",
    info: DistInfo | None = None,
    progress: bool = True,
    tokenizer_id: str | None = None,
    source: str | None = None,
    fingerprint: str | None = None,
    target_psnr: float | None = None,
    target_mse: float | None = None,
    target_lpips: float | None = None,
    mean_tokens: float | None = None,
    target_mean_psnr: float | None = None,
    candidates: list[int] | None = None,
    predictor: Any = None,
) -> dict[str, Any]:
    """Tokenize ``entries`` into the token dataset ``out``; returns its ``_dataset.json``.

    Adaptive lengths (a nested-dropout tokenizer, :mod:`larp.budget`): at most one of ``target_psnr``,
    ``target_mse``, ``target_lpips`` (each window's smallest candidate length meeting it), ``target_mean_psnr``
    (the mean PSNR of each shard's windows meets it) or ``mean_tokens`` (``mean_tokens`` ids per window on
    average **over each shard**: the budget is shared among a shard's windows), from ``candidates`` (default :func:`larp.budget.candidate_lengths`), by decoding or with a
    length ``predictor``. The rows then hold each window's valid ids only, ``window_lengths`` their counts;
    ``_dataset.json`` records the policy (``budget``) and the mean length reached (``mean_tokens``).

    Shard ``s`` holds ``entries[s * videos_per_shard : (s + 1) * videos_per_shard]`` in order (the videos
    that decode), whatever the number of processes: under ``torchrun`` rank ``r`` writes the shards with
    ``s % world_size == r``. A shard is finished when its ``shard-SSSSS.parquet`` and ``.progress/failed-SSSSS.jsonl``
    both exist (each written atomically); a rerun with the same settings keeps finished shards and redoes the
    others, so a killed run resumes. Decoding runs in ``num_workers`` processes, overlapping the model;
    windows of several videos are encoded ``batch_size`` at a time. Videos that cannot be decoded
    (:class:`~larp.data.video_io.VideoReadError`) are left out and listed in ``_failed.jsonl``; any other
    error propagates. All ranks must call this (it has collectives).

    Raises:
        ValueError: ``out`` holds a dataset made with other settings or another tokenizer, or another
            tokenization is writing there (the folder lock, held by the main rank).
    """
    for name, value in (("videos_per_shard", videos_per_shard), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if not entries:
        raise ValueError("no video to tokenize")
    info = info or DistInfo(0, 0, 1, tokenizer.device)
    out = Path(out)
    config = tokenizer.config
    if (plan.frames, plan.size) != (config.frame_num, config.input_size):
        raise ValueError(f"the window plan ({plan.frames} frames of {plan.size}x{plan.size}) is not the "
                         f"tokenizer's ({config.frame_num} frames of {config.input_size}x{config.input_size})")
    option = budget_option(target_psnr=target_psnr, target_mse=target_mse, target_lpips=target_lpips,
                           mean_tokens=mean_tokens, target_mean_psnr=target_mean_psnr)
    policy = None
    if option is not None:
        chosen, metric = resolve_policy(tokenizer, option, candidates, predictor)
        policy = budget_policy(option, chosen, metric, predictor)
    elif predictor is not None:
        raise ValueError("a length predictor needs a target (target_psnr, target_mse, target_lpips) or mean_tokens")
    fingerprint = fingerprint or tokenizer_fingerprint(tokenizer)
    codebook = int(config.quantizer.codebook_size)
    settings = {
        "tokenizer_fingerprint": fingerprint, "frames": plan.frames, "size": plan.size, "fps": plan.fps,
        "stride": plan.stride, "start": plan.start, "end": plan.end, "max_windows": plan.max_windows,
        "resize": plan.resize, "dtype": resolve_precision(precision, tokenizer.device),
        "videos_per_shard": videos_per_shard, "num_entries": len(entries), "entries_sha256": _entries_digest(entries),
        "budget": policy,
    }
    header = {
        "tokenizer": tokenizer_id or getattr(tokenizer, "source", None), "tokenizer_fingerprint": fingerprint,
        "codebook_size": codebook, "tokens_per_window": int(config.num_tokens), "frames_per_window": plan.frames,
        "size": plan.size, "fps": plan.fps, "stride": plan.stride, "resize": plan.resize, "source": source,
        "special_tokens": SPECIAL_TOKENS, "budget": policy,
    }
    num_shards = math.ceil(len(entries) / videos_per_shard)

    # the main rank takes the folder's lock; every rank checks the folder; all fail together
    lock = FolderLock(out, what="tokenization") if info.is_main else None
    problem = None
    if lock is not None:
        try:
            lock.acquire()
        except RuntimeError as error:
            problem = str(error)
    problem = problem or _check_existing(out, settings)
    problems = [p for p in gather_objects(problem, info) if p]
    if problems:
        if lock is not None:
            lock.release()
        raise ValueError(problems[0])
    try:
        if info.is_main:
            write_dataset_info(out, {**header, "complete": False, "num_videos": None, "num_windows": None,
                                     "num_failed": None, "shards": [], "settings": settings})
        barrier(info)
        mine = [s for s in range(num_shards) if s % info.world_size == info.rank and not _shard_finished(out, s)]
        _tokenize_shards(entries, mine, tokenizer, out, plan, codebook=codebook, videos_per_shard=videos_per_shard,
                         batch_size=batch_size, num_workers=num_workers, precision=precision,
                         progress=progress and info.is_main, ranks=info.world_size,
                         budget=None if option is None else (option, policy, predictor))
        barrier(info)
        if info.is_main:
            _finish(out, num_shards, {**header, "settings": settings})
        barrier(info)
    finally:
        if lock is not None:
            lock.release()
    return read_dataset_info(out)


def _finish(out: Path, num_shards: int, header: dict[str, Any]) -> None:
    """Merge the shards' failed lists into _failed.jsonl and write the complete _dataset.json."""
    failed, videos, windows, tokens = [], 0, 0, 0
    for shard in range(num_shards):
        missing = [n for n in (shard_name(shard), _failed_name(shard)) if not (out / n).is_file()]
        if missing:
            raise RuntimeError(f"{out}: {', '.join(missing)} missing after every rank finished")
        failed += read_jsonl(out / _failed_name(shard))
        table = pq.read_table(out / shard_name(shard), columns=["num_windows", "window_lengths"])
        counts = table.column("num_windows")
        videos += len(counts)
        windows += int(np.sum(counts.to_numpy(zero_copy_only=False)))
        tokens += int(np.sum(_flat(table.column("window_lengths")))) if table.num_rows else 0
    write_text_atomic(out / FAILED_NAME, "".join(json.dumps(record) + "\n" for record in failed))
    write_dataset_info(out, {**header, "complete": True, "num_videos": videos, "num_windows": windows,
                             "mean_tokens": tokens / windows if windows else None, "num_failed": len(failed),
                             "shards": [shard_name(s) for s in range(num_shards)]})


def _tokenize_shards(entries: Sequence[VideoEntry], shards: list[int], tokenizer: LARPTokenizer, out: Path,
                     plan: WindowPlan, *,
                     codebook: int, videos_per_shard: int, batch_size: int, num_workers: int, precision: str,
                     progress: bool, ranks: int, budget: tuple | None = None) -> None:
    """Write ``shards`` (this rank's unfinished ones): one DataLoader decodes all their videos.

    ``budget``: (option, policy, predictor) for adaptive lengths (a target per batch; a mean per shard)."""
    if not shards:
        return
    # the key of a video is its index in ``entries``: shard key // videos_per_shard
    keys = [k for s in shards for k in range(s * videos_per_shard, min((s + 1) * videos_per_shard, len(entries)))]
    items = [(k, entries[k].path) for k in keys]
    remaining = {s: min(videos_per_shard, len(entries) - s * videos_per_shard) for s in shards}
    loader = DataLoader(_ShardVideos(items, plan, batch_size), batch_size=None, num_workers=num_workers)
    pending: list[tuple[int, torch.Tensor]] = []  # windows waiting for a forward pass
    ids: dict[int, list[np.ndarray]] = {}
    lengths: dict[int, list[int]] = {}  # per video, its windows' lengths (targets) ...
    curves: dict[int, list[np.ndarray]] = {}  # ... or their rate-quality curves (a pooled policy, per shard)
    done: dict[int, dict] = {}
    failed: dict[int, str] = {}
    windows_total, failures, started = 0, 0, time.perf_counter()

    def forward(count: int) -> None:
        batch, pending[:] = pending[:count], pending[count:]
        clips = torch.stack([w for _, w in batch])
        n = int(tokenizer.config.num_tokens)
        batch_lengths = batch_curves = None
        if budget is None:
            codes = encode_windows(tokenizer, clips, precision).numpy()
        elif budget[0][0] in POOLED:
            full, batch_curves, _, _ = encode_with_curves(tokenizer, clips, budget[1]["candidates"],
                                                          predictor=budget[2], batch_size=batch_size,
                                                          precision=precision)
            codes, batch_curves = full.numpy(), batch_curves.numpy()
        else:
            kind, value = budget[0]
            choice = choose_lengths(tokenizer, clips, **{POLICIES[kind]: value}, candidates=budget[1]["candidates"],
                                    predictor=budget[2], batch_size=batch_size, precision=precision)
            codes, batch_lengths = choice.ids.numpy(), choice.lengths.tolist()
        for i, ((key, _), row) in enumerate(zip(batch, codes)):
            if key not in failed:
                ids.setdefault(key, []).append(row)
                lengths.setdefault(key, []).append(n if batch_lengths is None else batch_lengths[i])
                if batch_curves is not None:
                    curves.setdefault(key, []).append(batch_curves[i])

    def allocate(keys: list[int]) -> None:
        """A pooled policy (a mean budget or a mean target) over the windows of ``keys`` (one shard's videos)."""
        option, policy, _ = budget
        if not keys:
            return
        table = np.concatenate([np.stack(curves.pop(key)) for key in keys])
        chosen = allocate_pooled(option, torch.from_numpy(table), policy["candidates"], policy["metric"]).tolist()
        for key in keys:
            count = len(lengths[key])
            lengths[key], chosen = chosen[:count], chosen[count:]

    def write(shard: int) -> None:
        rows, reasons = [], []
        keys = range(shard * videos_per_shard, min((shard + 1) * videos_per_shard, len(entries)))
        if budget is not None and budget[0][0] in POOLED:
            allocate([key for key in keys if key not in failed])
        for key in keys:
            entry = entries[key]
            if key in failed:
                reasons.append({"video": entry.path, "reason": failed.pop(key)})
                continue
            meta = done.pop(key)
            codes = np.stack(ids.pop(key))
            counts = lengths.pop(key)
            width, height = meta["source_size"]
            rows.append({"video": entry.path, "label": entry.label,
                         "tokens": np.concatenate([row[:k] for row, k in zip(codes, counts)]),
                         "window_lengths": counts, "num_windows": codes.shape[0],
                         "fps": meta["fps"], "start": meta["start"], "pad_frames": meta["pad_frames"],
                         "source_fps": meta["source_fps"], "source_frames": meta["source_frames"],
                         "source_width": width, "source_height": height})
        write_text_atomic(out / _failed_name(shard), "".join(json.dumps(r) + "\n" for r in reasons))
        write_shard(out / shard_name(shard), rows, codebook)

    desc = "tokenize" + (f" (rank 0 of {ranks})" if ranks > 1 else "")
    with tqdm(total=len(items), desc=desc, unit="video", disable=None if progress else True,
              dynamic_ncols=True) as bar:  # None: a bar on a terminal only
        for kind, key, chunk, extra in loader:
            key = int(key)
            if kind == "windows":
                pending.extend((key, window) for window in chunk)
                while len(pending) >= batch_size:
                    forward(batch_size)
                continue
            if kind == "failed":
                failed[key] = extra
                failures += 1
                pending[:] = [(k, w) for k, w in pending if k != key]
                ids.pop(key, None)
                lengths.pop(key, None)
                curves.pop(key, None)
            else:
                done[key] = extra
                windows_total += int(extra["num_windows"])
            shard = key // videos_per_shard
            remaining[shard] -= 1
            if remaining[shard] == 0:
                while pending:
                    forward(min(batch_size, len(pending)))
                write(shard)
            bar.update(1)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(windows_per_s=f"{windows_total / elapsed:.1f}", failed=failures, refresh=False)
