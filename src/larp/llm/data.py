"""Interleaved text-video training data for a language model, from a token dataset and captions.

:func:`write_interleaved` writes one row per video of a token dataset (``larp.data.token_dataset``)::

    text-video:  [bos] caption <|video_start|> <|window|> codes ... <|video_end|> [eos]   loss on the video
    video-text:  [bos] <|video_start|> <|window|> codes ... <|video_end|> caption [eos]   loss on the caption

as Parquet shards (``OUT/shard-00000.parquet``, ...) with the columns ``input_ids``, ``attention_mask`` and
``labels`` (``input_ids`` where the loss applies, -100 elsewhere: what ``transformers`` models and ``Trainer``
read as is; pad batches with ``DataCollatorForSeq2Seq``), plus ``video``, ``caption`` and ``label`` for
reference. ``OUT/_llm_data.json`` says how it was made and holds the mapping (``VideoVocabulary.load(OUT)``
reads it); its name starts with ``_``, so ``pyarrow.parquet.read_table(OUT)`` and ``datasets.load_dataset(OUT)``
read the shards only (``load_dataset("parquet", data_files=f"{OUT}/shard-*.parquet")`` too).
A sequence longer than ``max_length`` loses its last windows (whole windows, the video stays closed); a video
none of whose windows fits is left out and counted.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from larp.data.token_dataset import read_dataset_info, read_rows
from larp.files import write_atomic, write_json_atomic
from larp.llm.vocabulary import VideoVocabulary

__all__ = ["INFO_NAME", "ORDERS", "build_sequence", "read_captions", "write_interleaved"]

#: The description file of an interleaved dataset.
INFO_NAME = "_llm_data.json"
#: The orders :func:`write_interleaved` writes, and which part carries the loss by default.
ORDERS = {"text-video": "video", "video-text": "text"}
_IGNORE = -100


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """A CSV file with the columns ``video,caption`` (a header line) -> {video: caption}."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"video", "caption"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV with a header line naming the columns video,caption; got "
                             f"{reader.fieldnames}")
        return {row["video"]: row["caption"] for row in reader}


def _text_ids(hf_tokenizer: Any, text: str) -> list[int]:
    return list(hf_tokenizer(text, add_special_tokens=False)["input_ids"])


def build_sequence(vocab: VideoVocabulary, windows: list, text_ids: list[int], *, order: str,
                   bos_id: int | None, eos_id: int | None, max_length: int | None = None,
                   loss: str | None = None) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) of one example (see the module docstring); None when no window fits."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
    loss = loss or ORDERS[order]
    if loss not in ("video", "text", "all"):
        raise ValueError(f"loss must be 'video', 'text' or 'all', got {loss!r}")
    head = [bos_id] if bos_id is not None else []
    tail = [eos_id] if eos_id is not None else []
    fixed = len(head) + len(text_ids) + len(tail) + 2  # + video start and end
    keep = len(windows)
    if max_length is not None:
        room, keep = max_length - fixed, 0
        for window in windows:
            room -= 1 + int((np.asarray(window) >= 0).sum())
            if room < 0:
                break
            keep += 1
        if keep == 0:
            return None
    video = vocab.encode(windows[:keep])
    parts = [(head, "none"), (text_ids, "text"), (video, "video")] if order == "text-video" else [
        (head, "none"), (video, "video"), (text_ids, "text")]
    parts.append((tail, "text" if order == "video-text" else "video"))
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, kind in parts:
        input_ids.extend(ids)
        trained = loss == "all" or kind == loss
        labels.extend(ids if trained and kind != "none" else [_IGNORE] * len(ids))
    return input_ids, labels


def write_interleaved(dataset: str | os.PathLike, out: str | os.PathLike, hf_tokenizer: Any,
                      vocab: VideoVocabulary, *, captions: Mapping[str, str] | str | os.PathLike | None = None,
                      order: str = "text-video", loss: str | None = None, max_length: int | None = None,
                      rows_per_shard: int = 10_000,
                      progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the interleaved LM data of the token dataset ``dataset`` into the folder ``out``.

    Args:
        dataset: a token dataset folder.
        out: the output folder (created; its shards are replaced).
        hf_tokenizer: the text tokenizer, already extended (``VideoVocabulary.extend``); its ``bos_token_id``
            and ``eos_token_id`` (when set) open and close every sequence.
        vocab: the video vocabulary (checked against ``hf_tokenizer``).
        captions: {video: caption}, a ``video,caption`` CSV file, or None to read a ``caption`` column of the
            dataset. Videos without a caption are left out and counted.
        order: ``"text-video"`` (text-to-video) or ``"video-text"`` (captioning).
        loss: the part the labels cover: ``"video"``, ``"text"`` or ``"all"`` (default: the second part).
        max_length: the most ids per sequence; longer ones lose their last windows.

    Returns:
        The description also written to ``out/_llm_data.json`` (counts, order, lengths).
    """
    vocab.check(hf_tokenizer)
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4):
        raise ValueError(f"max_length must be an integer >= 4, got {max_length!r}")
    info = read_dataset_info(dataset)
    codebook = info.get("codebook_size")
    if isinstance(codebook, int) and codebook > vocab.codebook_size:
        raise ValueError(f"{dataset} has a codebook of {codebook} codes, the vocabulary {vocab.codebook_size}")
    columns = ["video", "label", "tokens", "window_lengths"]
    table = read_rows(dataset, columns + (["caption"] if captions is None else []))
    if captions is None:
        if "caption" not in table.column_names:
            raise ValueError(f"{dataset} has no caption column: pass captions (a dict or a video,caption CSV)")
        caption_of = dict(zip(table.column("video").to_pylist(), table.column("caption").to_pylist()))
    elif isinstance(captions, Mapping):
        caption_of = dict(captions)
    else:
        caption_of = read_captions(captions)
    bos = getattr(hf_tokenizer, "bos_token_id", None)
    eos = getattr(hf_tokenizer, "eos_token_id", None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.parquet"):
        old.unlink()
    rows: list[dict[str, Any]] = []
    counts = {"rows": 0, "no_caption": 0, "too_long": 0, "cut": 0, "shards": 0}
    lengths: list[int] = []

    def flush() -> None:
        if not rows:
            return
        schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())),
                            ("labels", pa.list_(pa.int32())), ("video", pa.string()), ("caption", pa.string()),
                            ("label", pa.int64())])
        batch = pa.table({name: [row[name] for row in rows] for name in schema.names}, schema=schema)
        write_atomic(out / f"shard-{counts['shards']:05d}.parquet", lambda tmp: pq.write_table(batch, tmp))
        counts["shards"] += 1
        rows.clear()

    videos = table.column("video").to_pylist()
    labels = table.column("label").to_pylist()
    tokens = table.column("tokens").to_pylist()
    window_lengths = table.column("window_lengths").to_pylist()
    for i, (video, label, flat, sizes) in enumerate(zip(videos, labels, tokens, window_lengths)):
        caption = caption_of.get(video)
        if caption is None:
            counts["no_caption"] += 1
            continue
        bounds = np.cumsum([0] + list(sizes or []))
        windows = [flat[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]
        built = build_sequence(vocab, windows, _text_ids(hf_tokenizer, caption), order=order, bos_id=bos,
                               eos_id=eos, max_length=max_length, loss=loss)
        if built is None:
            counts["too_long"] += 1
            continue
        input_ids, targets = built
        counts["cut"] += int(len(vocab.decode(input_ids)) < len(windows))
        rows.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": targets,
                     "video": video, "caption": caption, "label": label})
        lengths.append(len(input_ids))
        counts["rows"] += 1
        if len(rows) >= rows_per_shard:
            flush()
        if progress is not None:
            progress(i + 1)
    flush()
    description = {"format": "larp-llm-data", "version": 1, "source": str(dataset), "order": order,
                   "loss": loss or ORDERS[order], "max_length": max_length, "bos_id": bos, "eos_id": eos,
                   "vocabulary": vocab.to_dict(), **counts,
                   "sequence_length": {"min": min(lengths, default=0), "max": max(lengths, default=0),
                                       "mean": float(np.mean(lengths)) if lengths else 0.0}}
    write_json_atomic(out / INFO_NAME, description)
    return description
