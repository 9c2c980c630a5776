"""Token rows for generator training from disk: a token dataset (``tokens.dataset``) or the recipe's own token
cache (``tokens.cache``), both in the one token-dataset format (:mod:`larp.data.token_dataset`).

**A token dataset** is what ``larp tokenize --manifest`` writes: one Parquet row per video, each full window a
training sample (:class:`~larp.data.token_dataset.TokenWindows`), the label from the row. An adaptive dataset
(``larp tokenize --target-psnr ...``) serves every window, its ids padded with -1 past its length, which a
generator with ``model.end_of_window`` models (an end-of-window token after each window's ids). Validation is
``tokens.val_dataset`` when given, else ``tokens.val_windows`` windows spread evenly over the dataset (every
``total / val_windows``-th in its row order, so that a manifest sorted by class gives every class), which are
then left out of training. The dataset's tokenizer fingerprint must be the recipe
tokenizer's; frame prediction needs condition tokens (a ``cond_tokens`` column), which only a token cache has.

**A token cache** holds the tokens of a recipe's clips (``data``): the official AR trainer encodes every batch
with the frozen tokenizer (deterministic VQ, bf16 autocast; LARP.md D.2), most of a small generator's step
time, so the cache encodes ``clips_per_video`` seeded random-start clips per video once, each also mirrored
when the data settings flip clips (a ``flipped`` row), and for frame prediction the tokens of each clip's
condition (``cond_tokens``; D.3). Training then samples its rows uniformly (a flipped and an unflipped row
per clip, where the official trainer flips at random). Layout::

    CACHE/train/_dataset.json + shard-00000.parquet ...  a token dataset, one row per clip (one window)
    CACHE/val/_dataset.json + shard-00000.parquet ...    the validation clips (clip start 0, no flip)

What made it is ``_dataset.json["settings"]`` (tokenizer fingerprint, data, clip settings); a cache is only
reused when they match. Every file is written atomically, ``_dataset.json`` says ``"complete": false`` until
the split is finished, and a rebuild skips finished shards, so a killed build resumes; one process builds a
folder at a time (a folder lock). A folder in the 0.1/0.2 ``.npy`` cache layout is rebuilt in this format.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from larp.config import config_to_dict
from larp.data.datasets import collate_skipping_none
from larp.data.token_dataset import (
    FORMAT,
    INFO_NAME,
    SPECIAL_TOKENS,
    VERSION,
    TokenWindows,
    is_token_dataset,
    read_dataset_info,
    read_rows,
    write_dataset_info,
    write_shard,
)
from larp.files import FolderLock
from larp.models.tokenizer import LARPTokenizer
from larp.seeding import derive_seed
from larp.training.data import SeededItems, build_datasets, flipped_label
from larp.training.recipe import DataConfig, GeneratorTrainConfig, TokenSourceConfig
from larp.training.token_cache import encode_clips, tokenizer_fingerprint

logger = logging.getLogger(__name__)

CACHE_KIND = "generator-token-cache"
CACHE_VERSION = 2  # 1: the .npy layout of larp 0.1/0.2 (cache.json, train/00000.tokens.npy, ...)
SHARD_CLIPS = 4096  # source clips per shard (rows are this times the number of orientations)
SPLITS = ("train", "val")
_OLD_SETTINGS = "cache.json"
_OLD_FILES = ("*.tokens.npy", "*.labels.npy", "*.cond.npy", "done.json")
_IGNORED_SETTINGS = {"tokenizer", "split"}  # the same weights may be named by another path


# ------------------------------------------------------------------------------------------ settings
def cache_settings(
    tokenizer: LARPTokenizer, fingerprint: str, *, data: DataConfig, tokens: TokenSourceConfig,
    condition_frames: int | None,
) -> dict[str, Any]:
    """What a cache must agree on to be reused (``_dataset.json["settings"]`` of its splits)."""
    # only the data fields that choose the clips: a manifest's synthetic_* defaults do not matter
    chosen = {k: v for k, v in config_to_dict(data).items()
              if k != "num_workers" and k.startswith("synthetic_") == (data.manifest is None)
              or k in ("random_flip", "val_videos")}
    settings = {
        "kind": CACHE_KIND,
        "cache_version": CACHE_VERSION,
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


def is_token_cache(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a generator token cache (its train split is a token dataset)."""
    return is_token_dataset(Path(folder) / "train")


def read_cache_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The settings that made the token cache ``folder`` (those of its train split).

    Raises:
        ValueError: not a token cache.
    """
    if not is_token_cache(folder):
        raise ValueError(f"{folder} is not a token cache (no train/{INFO_NAME})")
    settings = read_dataset_info(Path(folder) / "train").get("settings") or {}
    if settings.get("kind") != CACHE_KIND:
        raise ValueError(f"{Path(folder) / 'train' / INFO_NAME} is a token dataset but not a generator token "
                         f"cache (no settings.kind {CACHE_KIND!r})")
    return settings


def split_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """_dataset.json of a complete cache split, or None while it is incomplete or absent."""
    if not is_token_dataset(folder):
        return None
    info = read_dataset_info(folder)
    return info if info.get("complete", True) else None


def _remove_old_layout(folder: Path) -> None:
    """Delete the files of a 0.1/0.2 .npy token cache (only those), so that the folder is rebuilt."""
    logger.warning("the token cache %s is in the old .npy layout (larp 0.2 and earlier): rebuilding it as a "
                   "Parquet token dataset", folder)
    for split in SPLITS:
        for pattern in _OLD_FILES:
            for path in (folder / split).glob(pattern):
                path.unlink()
    (folder / _OLD_SETTINGS).unlink()


def _check_folder(folder: Path, settings: dict[str, Any]) -> None:
    """Raise unless ``folder`` is absent, empty, or a (partial) cache made with ``settings``."""
    if (folder / _OLD_SETTINGS).is_file():
        _remove_old_layout(folder)
    if not folder.exists():
        return
    known = {FolderLock(folder).path.name, *SPLITS}
    strangers = sorted(p.name for p in folder.iterdir() if p.name not in known)
    for split in SPLITS:
        part = folder / split
        if part.is_dir() and not is_token_dataset(part):
            strangers += [f"{split}/{p.name}" for p in part.iterdir()]
    if strangers:
        raise ValueError(f"{folder} is not empty and is not a token cache ({', '.join(strangers[:3])} ...): "
                         f"choose another tokens.cache")
    for split in SPLITS:
        if not is_token_dataset(folder / split):
            continue
        stored = read_dataset_info(folder / split).get("settings") or {}
        if stored.get("kind") != CACHE_KIND:
            raise ValueError(f"{folder / split} is a token dataset, not a generator token cache: choose another "
                             f"tokens.cache (a token dataset is trained on with tokens.dataset)")
        differ = sorted(k for k in set(settings) | set(stored)
                        if k not in _IGNORED_SETTINGS and stored.get(k) != settings.get(k))
        if differ:
            raise ValueError(
                f"the token cache {folder} was made with other settings ({', '.join(differ)} differ): delete it "
                f"to rebuild it, or point tokens.cache to a new folder"
            )


# ------------------------------------------------------------------------------------------ building
def _split_info(settings: dict[str, Any], split: str, *, complete: bool, shards: list[str], rows: int,
                failed: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": settings["tokenizer"],
        "tokenizer_fingerprint": settings["tokenizer_fingerprint"],
        "codebook_size": settings["codebook_size"],
        "tokens_per_window": settings["num_tokens"],
        "frames_per_window": settings["frames"],
        "fps": None,  # clips at the videos' own rate
        "stride": None,
        "resize": "crop",
        "num_videos": rows,  # rows: one clip (one window) each
        "num_windows": rows,
        "num_failed": failed,  # clips that could not be decoded
        "shards": shards,
        "special_tokens": SPECIAL_TOKENS,
        "complete": complete,
        "settings": {**settings, "split": split},
    }


def _rows(batch: dict[str, Any], ids: torch.Tensor, cond: torch.Tensor | None, labels: torch.Tensor,
          flipped: bool) -> list[dict[str, Any]]:
    """Token-dataset rows of one encoded batch of clips (one window each)."""
    names = batch["path"] if "path" in batch else [f"synthetic:{int(i)}" for i in batch["index"]]
    ids = ids.cpu().numpy()
    cond = cond.cpu().numpy() if cond is not None else None
    rows = []
    for j, name in enumerate(names):
        label = int(labels[j])
        row = {"video": str(name), "label": label if label >= 0 else None, "tokens": ids[j],
               "window_lengths": [ids.shape[1]], "num_windows": 1, "fps": None, "start": None, "pad_frames": 0,
               "source_fps": None, "source_frames": None, "source_width": None, "source_height": None,
               "flipped": flipped}
        if cond is not None:
            row["cond_tokens"] = cond[j]
        rows.append(row)
    return rows


def _encode_split(
    folder: Path, dataset: Dataset, items: list[tuple[int, int]], *, flip: bool, tokenizer: LARPTokenizer,
    settings: dict[str, Any], split: str, precision: str, condition_frames: int | None, batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Encode ``items`` ((index, seed) pairs) of ``dataset`` into the token dataset ``folder``; its info."""
    done = split_info(folder)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    write_dataset_info(folder, _split_info(settings, split, complete=False, shards=[], rows=0, failed=0))
    seeded = SeededItems(dataset)
    codebook = settings["codebook_size"]
    desc = f"token cache ({split})"
    with tqdm(total=len(items), desc=desc, unit="clip", disable=not progress, dynamic_ncols=True) as bar:
        for shard, first in enumerate(range(0, len(items), SHARD_CLIPS)):
            path = folder / f"shard-{shard:05d}.parquet"
            chunk = items[first : first + SHARD_CLIPS]
            if path.is_file():  # finished by an earlier, interrupted build
                bar.update(len(chunk))
                continue
            rows: list[dict[str, Any]] = []
            for start in range(0, len(chunk), batch_size):
                part = chunk[start : start + batch_size]
                batch = collate_skipping_none(seeded.__getitems__(part))
                bar.update(len(part))
                if "video" not in batch:  # no clip of this batch could be decoded
                    continue
                orientations = [(batch["video"], batch["label"], False)]
                if flip:
                    mirrored = torch.tensor([flipped_label(dataset, int(label)) for label in batch["label"]])
                    orientations.append((batch["video"].flip(-1), mirrored, True))
                for video, labels, flipped in orientations:
                    ids, cond = encode_clips(tokenizer, video, precision=precision, condition_frames=condition_frames)
                    rows += _rows(batch, ids, cond, labels, flipped)
            if rows:  # a shard of undecodable clips is left unwritten (and retried by a rebuild)
                write_shard(path, rows, codebook)
    shards = sorted(p.name for p in folder.glob("shard-*.parquet"))
    count = sum(pq.read_metadata(folder / name).num_rows for name in shards)
    if count == 0:
        raise ValueError(f"no clip of the {split} split of {folder.parent} could be encoded")
    failed = len(items) - count // (2 if flip else 1)
    if failed:
        logger.warning("%d clip(s) could not be decoded and are not in the token cache %s", failed, folder)
    info = _split_info(settings, split, complete=True, shards=shards, rows=count, failed=failed)
    write_dataset_info(folder, info)
    return info


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
    _check_folder(folder, settings)
    with FolderLock(folder, what="token cache build"):
        if all(split_info(folder / split) is not None for split in SPLITS):
            return folder  # complete: nothing to decode
        # flips are the cache's job (both orientations are stored), so the datasets must not flip
        train, val, _ = build_datasets(replace(data, random_flip=False), frames=config.frame_num,
                                       size=config.input_size)
        # one seed per (clip, video), independent of the dataset's length: a longer manifest keeps the clips
        # of the videos it shares with a shorter one
        train_items = [(i, derive_seed(tokens.clip_seed, k, i))
                       for k in range(tokens.clips_per_video) for i in range(len(train))]
        common = dict(tokenizer=tokenizer, settings=settings, precision=tokens.precision,
                      condition_frames=condition_frames, batch_size=tokens.encode_batch_size, progress=progress)
        _encode_split(folder / "train", train, train_items, flip=data.random_flip, split="train", **common)
        _encode_split(folder / "val", val, [(i, 0) for i in range(len(val))], flip=False, split="val", **common)
    return folder


# ------------------------------------------------------------------------------------------ reading
def stack_windows(dataset: Dataset, indices: range | None = None) -> dict[str, torch.Tensor]:
    """Items of a token-window dataset as tensors: ``tokens`` (n, N), ``label`` (n,), ``cond`` (n, N)."""
    items = [dataset[i] for i in (range(len(dataset)) if indices is None else indices)]
    out = {"tokens": torch.stack([item["tokens"] for item in items]),
           "label": torch.tensor([int(item["label"]) for item in items], dtype=torch.int64)}
    if items and "cond" in items[0]:
        out["cond"] = torch.stack([item["cond"] for item in items])
    return out


def held_out_windows(total: int, count: int) -> list[int]:
    """The ``count`` validation windows of a dataset of ``total`` (``count < total``): spread evenly over it
    (every ``total / count``-th, from the first), so that a manifest sorted by class gives every class."""
    return [int(i) for i in np.linspace(0, total, count, endpoint=False).astype(np.int64)]


def open_token_dataset(
    folder: str | os.PathLike, *, fingerprint: str, tokenizer: str, frame_prediction: bool,
    condition_frames: int, key: str = "tokens.dataset",
) -> TokenWindows:
    """The windows of a token dataset, checked for training a generator on the tokens of ``tokenizer``.

    Raises:
        ValueError: no dataset there, an unfinished one, another tokenizer's (fingerprint), no window, frame
            prediction without condition tokens (or other condition frames), or a class-conditional recipe
            on rows without labels. Each names ``key`` and the folder.
    """
    where = f"{key}={folder}"
    try:
        info = read_dataset_info(folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    if info.get("complete") is False:
        raise ValueError(f"{where} is unfinished (its build was interrupted): rerun the command that writes it")
    stored = str(info.get("tokenizer_fingerprint"))
    if stored != fingerprint:
        raise ValueError(
            f"{where} was tokenized by another tokenizer ({info.get('tokenizer')}, weights fingerprint "
            f"{stored[:12]}) than tokens.tokenizer={tokenizer} (fingerprint {fingerprint[:12]}): tokenize the "
            f"videos again with this tokenizer, or set tokens.tokenizer to the one that made the dataset"
        )
    windows = TokenWindows(folder)
    if len(windows) == 0:
        raise ValueError(f"{where} holds no window to train on (a fixed-length dataset serves its full windows only)")
    if frame_prediction:
        if "cond" not in windows[0]:
            raise ValueError(
                f"{where} has no condition tokens (column cond_tokens), which a frame-prediction generator "
                f"needs; `larp tokenize --manifest` writes windows only: train on the recipe's token cache "
                f"instead (tokens.cache, built from data.manifest)"
            )
        made = (info.get("settings") or {}).get("condition_frames")
        if made is not None and made != condition_frames:
            raise ValueError(f"{where} holds the condition tokens of {made} frames, the recipe asks for "
                             f"condition_frames={condition_frames}")
    else:
        unlabelled = read_rows(folder, ["label"]).column("label").null_count
        if unlabelled:
            raise ValueError(
                f"a class-conditional generator needs a class label for every window, but {unlabelled} row(s) of "
                f"{where} have none: tokenize a manifest with labels (or folders per class)"
            )
    return windows


def load_token_rows(
    recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer,
) -> tuple[Dataset, dict[str, torch.Tensor], str] | None:
    """(train rows, validation tokens, a description) of a recipe that reads tokens from disk, or None when
    its tokens are encoded on the fly (no ``tokens.dataset``, no ``tokens.cache``).

    ``tokens.dataset`` wins over ``tokens.cache`` (and ``data``). A cache must have been built
    (:func:`build_token_cache`) before.
    """
    tokens, model = recipe.tokens, recipe.model
    if tokens.dataset is not None:
        checks = dict(fingerprint=tokenizer_fingerprint(tokenizer), tokenizer=tokens.tokenizer,
                      frame_prediction=model.frame_prediction, condition_frames=recipe.condition_frames)
        train: Dataset = open_token_dataset(tokens.dataset, **checks)
        if tokens.val_dataset is not None:
            val = stack_windows(open_token_dataset(tokens.val_dataset, key="tokens.val_dataset", **checks))
            held = f"validation: {tokens.val_dataset}"
        else:
            total, hold = len(train), tokens.val_windows
            if hold >= total:
                raise ValueError(f"tokens.dataset={tokens.dataset} has {total} windows: tokens.val_windows={hold} "
                                 f"would leave none to train on; lower it or give tokens.val_dataset")
            held_out = held_out_windows(total, hold)
            val = stack_windows(train, held_out)
            train = Subset(train, sorted(set(range(total)) - set(held_out)))
            held = f"{hold} spread over it held out for validation"
        return train, val, f"from the token dataset {tokens.dataset} ({len(train):,} windows; {held})"
    if tokens.cache is not None:
        cache = Path(tokens.cache)
        for split in SPLITS:
            if split_info(cache / split) is None:
                raise ValueError(f"the token cache {cache} is incomplete ({split}): build it first")
        return TokenWindows(cache / "train"), stack_windows(TokenWindows(cache / "val")), f"from the cache {cache}"
    return None
