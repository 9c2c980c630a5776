"""Tokens for generator training: encoded on the fly, or once into a token cache.

The official AR trainer encodes every batch with the frozen tokenizer (deterministic VQ, bf16 autocast;
LARP.md D.2). That is most of a small generator's step time, so a cache holds the tokens of a dataset's
clips instead: ``clips_per_video`` seeded random-start clips per video, each also mirrored when the data
settings flip clips, and for frame prediction the tokens of each clip's condition (D.3). Training then
samples rows of the cache uniformly (a flipped and an unflipped row per clip, where the official trainer
flips at random).

Layout of a cache folder::

    CACHE/cache.json                       what made it: tokenizer fingerprint, data, clip settings
    CACHE/train/00000.tokens.npy           (m, N) int16/int32 token ids of one shard of rows
    CACHE/train/00000.labels.npy           (m,) int64 class labels (-1: unknown)
    CACHE/train/00000.cond.npy             (m, N) condition tokens (frame prediction only)
    CACHE/train/done.json                  the number of rows, written when the split is complete
    CACHE/val/...                          the validation clips (clip start 0, no flip)

Every file is written atomically and a rebuild skips finished shards, so a killed build resumes; one
process builds a folder at a time (a folder lock). A cache is only reused when ``cache.json`` matches the
tokenizer (by a fingerprint of its weights) and the settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from larp.config import config_to_dict
from larp.data.datasets import collate_skipping_none
from larp.data.video_io import condition_clip
from larp.files import FolderLock, write_atomic, write_json_atomic
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast
from larp.seeding import derive_seed
from larp.training.data import SeededItems, build_datasets, flipped_label
from larp.training.recipe import DataConfig, TokenSourceConfig

logger = logging.getLogger(__name__)

FORMAT = "larp-token-cache"
VERSION = 1
SHARD_ROWS = 4096  # source clips per shard (rows are this times the number of orientations)
SETTINGS_NAME = "cache.json"
DONE_NAME = "done.json"


# ------------------------------------------------------------------------------------------ encoding
@torch.no_grad()
def encode_clips(
    tokenizer: LARPTokenizer, video: torch.Tensor, *, precision: str = "fp32", condition_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Deterministic tokens of clips (b, 3, T, s, s) in [0, 1] -> ids (b, N), and for frame prediction
    (``condition_frames`` given) the ids of the condition clips (b, N), encoded in the same batch (D.3).

    ``precision`` is a :data:`larp.precision.PRECISIONS` name (``auto``: bf16 autocast on CUDA, fp32 elsewhere).
    """
    device = tokenizer.device
    video = video.to(device, non_blocking=True)
    if condition_frames is not None:
        video = torch.cat([video, condition_clip(video, condition_frames)])
    with autocast(precision, device):
        ids = tokenizer.encode(video, stochastic=False)
    if condition_frames is None:
        return ids, None
    return ids.chunk(2)


def tokenizer_fingerprint(tokenizer: LARPTokenizer) -> str:
    """sha256 over the tokenizer's config and weights: identifies the tokens it makes."""
    digest = hashlib.sha256(json.dumps(config_to_dict(tokenizer.config), sort_keys=True).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ building
def cache_settings(
    tokenizer: LARPTokenizer, fingerprint: str, *, data: DataConfig, tokens: TokenSourceConfig,
    condition_frames: int | None,
) -> dict[str, Any]:
    """What a cache must agree on to be reused (stored as cache.json). The same content as larp 0.1.0
    wrote, so its caches are reused when the settings are the same."""
    # only the data fields that choose the clips: a manifest's synthetic_* defaults do not matter
    chosen = {k: v for k, v in config_to_dict(data).items()
              if k != "num_workers" and k.startswith("synthetic_") == (data.manifest is None)
              or k in ("random_flip", "val_videos")}
    settings = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tokens.tokenizer,
        "tokenizer_fingerprint": fingerprint,
        "num_tokens": tokenizer.config.num_tokens,
        "codebook_size": tokenizer.config.quantizer.codebook_size,
        "frames": tokenizer.config.frame_num,
        "size": tokenizer.config.input_size,
        "data": chosen,
        "clips_per_video": tokens.clips_per_video,
        "clip_seed": tokens.clip_seed,
        "flip": data.random_flip,
        "condition_frames": condition_frames,
    }
    return json.loads(json.dumps(settings))  # as stored: tuples become lists


def read_cache_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The cache.json of a token cache folder.

    Raises:
        ValueError: no cache.json, not valid JSON, or not a larp token cache.
    """
    path = Path(folder) / SETTINGS_NAME
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a token cache (no {SETTINGS_NAME})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete the cache folder to rebuild it") from None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise ValueError(f"{path} is not a larp token cache (no \"format\": \"{FORMAT}\")")
    return stored


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    if not (folder / SETTINGS_NAME).is_file():
        # a build killed before it wrote cache.json leaves only its (released) lock file
        if folder.exists() and any(p.name != FolderLock(folder).path.name for p in folder.iterdir()):
            raise ValueError(f"{folder} is not empty and is not a token cache (no {SETTINGS_NAME}); "
                             f"choose another tokens.cache")
        return
    stored = read_cache_settings(folder)
    ignored = {"tokenizer"}  # the same weights may be named by another path
    differ = sorted(k for k in set(settings) | set(stored) if k not in ignored and stored.get(k) != settings.get(k))
    if differ:
        raise ValueError(
            f"the token cache {folder} was made with other settings ({', '.join(differ)} differ): delete it to "
            f"rebuild it, or point tokens.cache to a new folder"
        )


def split_rows(folder: str | os.PathLike) -> int | None:
    """Rows of a complete cache split (its done.json), or None while it is incomplete."""
    done = Path(folder) / DONE_NAME
    return json.loads(done.read_text())["rows"] if done.is_file() else None


def _save_npy(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda tmp: np.save(tmp, array))


def _token_dtype(codebook_size: int):
    return np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32


def _encode_split(
    folder: Path, dataset: Dataset, items: list[tuple[int, int]], *, flip: bool, tokenizer: LARPTokenizer,
    precision: str, condition_frames: int | None, batch_size: int, desc: str, progress: bool,
) -> int:
    """Encode ``items`` ((index, seed) pairs) of ``dataset`` into shards under ``folder``; returns the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = split_rows(folder)
    if rows is not None:
        return rows
    seeded = SeededItems(dataset)
    dtype = _token_dtype(tokenizer.config.quantizer.codebook_size)
    skipped = 0
    with tqdm(total=len(items), desc=desc, unit="clip", disable=not progress, dynamic_ncols=True) as bar:
        for shard, first in enumerate(range(0, len(items), SHARD_ROWS)):
            stem = folder / f"{shard:05d}"
            chunk = items[first : first + SHARD_ROWS]
            if Path(f"{stem}.labels.npy").is_file():  # finished by an earlier, interrupted build
                bar.update(len(chunk))
                continue
            tokens, conds, labels = [], [], []
            for start in range(0, len(chunk), batch_size):
                part = chunk[start : start + batch_size]
                batch = collate_skipping_none(seeded.__getitems__(part))
                skipped += batch["skipped"]
                bar.update(len(part))
                if "video" not in batch:  # no clip of this batch could be decoded
                    continue
                orientations = [(batch["video"], batch["label"])]
                if flip:
                    mirrored = torch.tensor([flipped_label(dataset, int(label)) for label in batch["label"]])
                    orientations.append((batch["video"].flip(-1), mirrored))
                for video, label in orientations:
                    ids, cond = encode_clips(tokenizer, video, precision=precision, condition_frames=condition_frames)
                    tokens.append(ids.cpu().numpy().astype(dtype))
                    labels.append(label.numpy().astype(np.int64))
                    if cond is not None:
                        conds.append(cond.cpu().numpy().astype(dtype))
            width = tokenizer.config.num_tokens
            # labels last: their file marks the shard as finished
            if conds:
                _save_npy(Path(f"{stem}.cond.npy"), np.concatenate(conds))
            _save_npy(Path(f"{stem}.tokens.npy"), np.concatenate(tokens) if tokens else np.zeros((0, width), dtype))
            _save_npy(Path(f"{stem}.labels.npy"), np.concatenate(labels) if labels else np.zeros((0,), np.int64))
    if skipped:
        logger.warning("%d clip(s) could not be decoded and are not in the cache %s", skipped, folder)
    rows = sum(np.load(p, mmap_mode="r").shape[0] for p in sorted(folder.glob("*.labels.npy")))
    if rows == 0:
        raise ValueError(f"no clip of {desc} could be encoded")
    write_json_atomic(folder / DONE_NAME, {"rows": rows, "skipped_clips": skipped}, indent=None)
    return rows


def build_token_cache(
    tokenizer: LARPTokenizer,
    cache: str | os.PathLike,
    *,
    data: DataConfig,
    tokens: TokenSourceConfig,
    condition_frames: int | None,
    progress: bool = True,
) -> Path:
    """Encode the training and validation clips of ``data`` into a token cache at ``cache`` (or reuse it).

    Train rows: ``tokens.clips_per_video`` clips per video with random starts seeded by ``tokens.clip_seed``
    (the same on every rebuild), plus their mirror images when ``data.random_flip``. Validation rows: the
    validation clips as they are. ``condition_frames`` (frame prediction) also stores the tokens of each
    clip's condition; None stores class labels only. ``tokens.precision`` and ``tokens.encode_batch_size``
    say how to encode; ``tokens.tokenizer`` is recorded (``tokens.cache`` is not read: ``cache`` is the folder).

    Raises:
        ValueError: the folder holds a cache made with other settings, or something that is not a cache.
        FolderLockedError: another process is building this cache.
    """
    folder = Path(cache)
    config = tokenizer.config
    for key, value in (("tokens.clips_per_video", tokens.clips_per_video),
                       ("tokens.encode_batch_size", tokens.encode_batch_size), ("data.val_videos", data.val_videos)):
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
    if condition_frames is not None and not 1 <= condition_frames <= config.frame_num:
        raise ValueError(f"condition_frames must be in [1, {config.frame_num}] (the tokenizer's clip), "
                         f"got {condition_frames}")
    settings = cache_settings(tokenizer, tokenizer_fingerprint(tokenizer), data=data, tokens=tokens,
                              condition_frames=condition_frames)
    _check_settings(folder, settings)
    with FolderLock(folder, what="token cache build"):
        write_json_atomic(folder / SETTINGS_NAME, settings)
        # flips are the cache's job (both orientations are stored), so the datasets must not flip
        train, val, _ = build_datasets(replace(data, random_flip=False), frames=config.frame_num,
                                       size=config.input_size)
        # one seed per (clip, video), independent of the dataset's length: a longer manifest keeps the clips
        # of the videos it shares with a shorter one. (larp 0.1.0 drew the seeds from one stream over the
        # whole dataset, so its caches hold other clip starts; they are still valid and reused as they are.)
        train_items = [(i, derive_seed(tokens.clip_seed, k, i))
                       for k in range(tokens.clips_per_video) for i in range(len(train))]
        common = dict(tokenizer=tokenizer, precision=tokens.precision, condition_frames=condition_frames,
                      batch_size=tokens.encode_batch_size, progress=progress)
        _encode_split(folder / "train", train, train_items, flip=data.random_flip, desc="token cache (train)",
                      **common)
        _encode_split(folder / "val", val, [(i, 0) for i in range(len(val))], flip=False,
                      desc="token cache (val)", **common)
    return folder


# ------------------------------------------------------------------------------------------ reading
class TokenRows(Dataset):
    """One split of a token cache, memory-mapped. Items: ``{"tokens": (N,), "label": int, "cond": (N,)}``."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        if split_rows(folder) is None:
            raise ValueError(f"{folder} is not a complete token-cache split (no done.json); rebuild the cache")
        stems = sorted(str(p)[: -len(".labels.npy")] for p in folder.glob("*.labels.npy"))
        self.tokens = [np.load(f"{s}.tokens.npy", mmap_mode="r") for s in stems]
        self.labels = np.concatenate([np.load(f"{s}.labels.npy") for s in stems])
        has_cond = Path(f"{stems[0]}.cond.npy").is_file()
        self.cond = [np.load(f"{s}.cond.npy", mmap_mode="r") for s in stems] if has_cond else None
        self.offsets = np.cumsum([0] + [t.shape[0] for t in self.tokens])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for a cache split of {len(self)} rows")
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return shard, index - int(self.offsets[shard])

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, row = self._locate(int(index))
        item = {"tokens": torch.from_numpy(self.tokens[shard][row].astype(np.int64)), "label": int(self.labels[index])}
        if self.cond is not None:
            item["cond"] = torch.from_numpy(self.cond[shard][row].astype(np.int64))
        return item

    def all(self) -> dict[str, torch.Tensor]:
        """The whole split as tensors (for validation sets)."""
        out = {"tokens": torch.from_numpy(np.concatenate(self.tokens).astype(np.int64)),
               "label": torch.from_numpy(self.labels)}
        if self.cond is not None:
            out["cond"] = torch.from_numpy(np.concatenate(self.cond).astype(np.int64))
        return out
