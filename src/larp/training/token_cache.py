"""Tokens for generator training: encoded on the fly, or once into a token cache.

The official AR trainer encodes every batch with the frozen tokenizer (deterministic VQ, bf16 autocast;
LARP.md D.2). That is most of a small generator's step time, so a cache holds the tokens of a dataset's
clips instead: ``clips_per_video`` seeded random-start clips per video, each also mirrored when the recipe
flips clips, and for frame prediction the tokens of each clip's condition (D.3). Training then samples rows
of the cache uniformly (a flipped and an unflipped row per clip, where the official trainer flips at random).

Layout of a cache folder::

    CACHE/cache.json                       what made it: tokenizer fingerprint, data, clip settings
    CACHE/train/00000.tokens.npy           (m, N) int16/int32 token ids of one shard of rows
    CACHE/train/00000.labels.npy           (m,) int64 class labels (-1: unknown)
    CACHE/train/00000.cond.npy             (m, N) condition tokens (frame prediction only)
    CACHE/train/done.json                  the number of rows, written when the split is complete
    CACHE/val/...                          the validation clips (clip start 0, no flip)

Shards are written atomically and a rebuild skips finished ones, so a killed build resumes. A cache is
only reused when ``cache.json`` matches the tokenizer (by a fingerprint of its weights) and the settings.
"""

from __future__ import annotations

import contextlib
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
from larp.models.tokenizer import LARPTokenizer
from larp.training.data import SeededItems, build_datasets, flipped_label
from larp.training.recipe import GeneratorTrainConfig

logger = logging.getLogger(__name__)

FORMAT = "larp-token-cache"
VERSION = 1
SHARD_ROWS = 4096  # source clips per shard (rows are this times the number of orientations)
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------ encoding
def tokenizer_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on CUDA (the official trainer) and fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP[precision])


@torch.no_grad()
def encode_clips(
    tokenizer: LARPTokenizer, video: torch.Tensor, *, precision: str = "fp32", condition_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Deterministic tokens of clips (b, 3, T, s, s) in [0, 1] -> ids (b, N), and for frame prediction
    (``condition_frames`` given) the ids of the condition clips (b, N), encoded in the same batch (D.3)."""
    device = tokenizer.device
    video = video.to(device, non_blocking=True)
    if condition_frames is not None:
        video = torch.cat([video, condition_clip(video, condition_frames)])
    with _autocast(precision, device):
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
def cache_settings(recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer, fingerprint: str) -> dict[str, Any]:
    """What a cache must agree on to be reused for ``recipe`` (stored as cache.json)."""
    # only the data fields that choose the clips: a manifest's synthetic_* defaults do not matter
    data = {k: v for k, v in config_to_dict(recipe.data).items()
            if k != "num_workers" and k.startswith("synthetic_") == (recipe.data.manifest is None)
            or k in ("random_flip", "val_videos")}
    settings = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": recipe.tokens.tokenizer,
        "tokenizer_fingerprint": fingerprint,
        "num_tokens": tokenizer.config.num_tokens,
        "codebook_size": tokenizer.config.quantizer.codebook_size,
        "frames": tokenizer.config.frame_num,
        "size": tokenizer.config.input_size,
        "data": data,
        "clips_per_video": recipe.tokens.clips_per_video,
        "clip_seed": recipe.tokens.clip_seed,
        "flip": recipe.data.random_flip,
        "condition_frames": recipe.condition_frames if recipe.model.frame_prediction else None,
    }
    return json.loads(json.dumps(settings))  # as stored: tuples become lists


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    path = folder / "cache.json"
    if not path.is_file():
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{folder} is not empty and is not a token cache (no cache.json); choose another tokens.cache")
        return
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete the cache folder to rebuild it") from None
    if stored.get("format") != FORMAT:
        raise ValueError(f"{path} is not a larp token cache")
    ignored = {"tokenizer"}  # the same weights may be named by another path
    differ = sorted(k for k in set(settings) | set(stored) if k not in ignored and stored.get(k) != settings.get(k))
    if differ:
        raise ValueError(
            f"the token cache {folder} was made with other settings ({', '.join(differ)} differ): delete it to "
            f"rebuild it, or point tokens.cache to a new folder"
        )


def _split_rows(folder: Path) -> int | None:
    done = folder / "done.json"
    return json.loads(done.read_text())["rows"] if done.is_file() else None


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _token_dtype(codebook_size: int):
    return np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32


def _encode_split(
    folder: Path, dataset: Dataset, items: list[tuple[int, int]], *, flip: bool, tokenizer: LARPTokenizer,
    precision: str, condition_frames: int | None, batch_size: int, desc: str, progress: bool,
) -> int:
    """Encode ``items`` ((index, seed) pairs) of ``dataset`` into shards under ``folder``; returns the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = _split_rows(folder)
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
            if conds:
                _save_npy(Path(f"{stem}.cond.npy"), np.concatenate(conds))
            _save_npy(Path(f"{stem}.tokens.npy"), np.concatenate(tokens) if tokens else np.zeros((0, width), dtype))
            _save_npy(Path(f"{stem}.labels.npy"), np.concatenate(labels) if labels else np.zeros((0,), np.int64))
    if skipped:
        logger.warning("%d clip(s) could not be decoded and are not in the cache %s", skipped, folder)
    rows = sum(np.load(p, mmap_mode="r").shape[0] for p in sorted(folder.glob("*.labels.npy")))
    if rows == 0:
        raise ValueError(f"no clip of {desc} could be encoded")
    (folder / "done.json").write_text(json.dumps({"rows": rows, "skipped_clips": skipped}) + "\n")
    return rows


def build_token_cache(
    recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer, folder: str | os.PathLike, *, progress: bool = True
) -> Path:
    """Encode the recipe's training and validation data into a token cache at ``folder`` (or reuse it).

    Train rows: ``clips_per_video`` clips per video with seeded random starts (the same on every rebuild),
    plus their mirror images when ``data.random_flip``. Validation rows: the validation clips as they are.
    """
    folder = Path(folder)
    settings = cache_settings(recipe, tokenizer, tokenizer_fingerprint(tokenizer))
    _check_settings(folder, settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cache.json").write_text(json.dumps(settings, indent=2) + "\n")

    config = tokenizer.config
    # flips are the cache's job (both orientations are stored), so the datasets must not flip
    train, val, _ = build_datasets(replace(recipe.data, random_flip=False), frames=config.frame_num, size=config.input_size)
    generator = torch.Generator().manual_seed(recipe.tokens.clip_seed)
    seeds = torch.randint(0, 2**62, (len(train), recipe.tokens.clips_per_video), generator=generator)
    train_items = [(i, int(seeds[i, k])) for k in range(recipe.tokens.clips_per_video) for i in range(len(train))]
    common = dict(
        tokenizer=tokenizer,
        precision=tokenizer_precision(recipe.tokens.precision, tokenizer.device),
        condition_frames=recipe.condition_frames if recipe.model.frame_prediction else None,
        batch_size=recipe.tokens.encode_batch_size,
        progress=progress,
    )
    _encode_split(folder / "train", train, train_items, flip=recipe.data.random_flip, desc="token cache (train)", **common)
    _encode_split(folder / "val", val, [(i, 0) for i in range(len(val))], flip=False, desc="token cache (val)", **common)
    return folder


# ------------------------------------------------------------------------------------------ reading
class TokenRows(Dataset):
    """One split of a token cache, memory-mapped. Items: ``{"tokens": (N,), "label": int, "cond": (N,)}``."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        if _split_rows(folder) is None:
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
