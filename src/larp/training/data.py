"""Training data streams that are exact across processes, workers and resumes, and fail fast on bad data.

Each epoch's order is a seeded permutation sharded over ranks, and every sample carries its own seed
(drawn from the same seeded stream), which fixes its random clip start and flip whatever worker loads
it. The sampler's position is part of the checkpoint, so a resumed run continues with the very samples
the uninterrupted run would have seen.

Bad data ends a run quickly with one clear line instead of a run that skips videos forever:

* missing files are checked when the datasets are built (:func:`build_datasets`): all missing is an
  error naming the manifest and the root, a few missing are left out with one warning;
* a stream that decodes no clip at all raises :class:`DataError` with the counts and first reasons
  after a bounded number of attempts (see :class:`TrainStream`);
* a dataset smaller than a batch (or than ``batch_size x world_size``) repeats its order to fill it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from larp.data.datasets import SkippedVideo, VideoClipDataset, VideoEntry, collate_skipping_none, load_existing_entries
from larp.data.synthetic import SyntheticConfig, SyntheticVideos
from larp.seeding import derive_seed
from larp.training.recipe import DataConfig

# Keys of derive_seed(seed, key, epoch): the epoch's order and sample seeds, and its DataLoader's generator.
_ORDER_KEY, _LOADER_KEY = 0, 1
# A stream that has decoded nothing gives up after max(2 * batch_size, _MIN_ATTEMPTS) failed items (or
# sooner, once every video of the dataset has failed): a few seconds for files that fail to open.
_MIN_ATTEMPTS = 64
# Distinct failure reasons named in a DataError.
_SHOWN_REASONS = 3

# An item of SeededItems: a sample, a video that could not be decoded (with its reason), or None.
Item = dict[str, Any] | SkippedVideo | None


class DataError(ValueError):
    """The training data yields no usable clip (every video tried failed to decode)."""


class ResumableSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank; ``position`` samples of the epoch are skipped.

    Every rank gets ``max(ceil(size / world_size), batch_size)`` items per epoch: the epoch's
    permutation is repeated to fill the ranks (as for any size not divisible by ``world_size``) and, for
    a dataset smaller than ``batch_size x world_size``, to fill one batch per rank. Repeated items get
    their own sample seeds (another clip start and flip).
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 batch_size: int = 1):
        if size < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.per_rank = max(math.ceil(size / world_size), batch_size)  # items of one rank per epoch
        self.epoch, self.position = 0, 0

    def _epoch_items(self) -> list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _ORDER_KEY, self.epoch))
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        total = self.per_rank * self.world_size
        order = order.repeat(math.ceil(total / self.size))[:total]
        seeds = torch.randint(0, 2**62, (len(order),), generator=generator)
        return list(zip(order[self.rank :: self.world_size].tolist(), seeds[self.rank :: self.world_size].tolist()))

    def __len__(self) -> int:
        return self.per_rank - self.position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        yield from self._epoch_items()[self.position :]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def flipped_label(dataset: Dataset, label: int) -> int:
    """The label of a horizontally flipped clip of ``dataset``.

    Datasets whose classes are directions (the synthetic one) say so with ``mirror_labels``: a flipped
    "right" clip is a "left" one, and a class without a mirror class becomes -1 (unknown). Real action
    datasets keep the label, as the official trainers do (an action is an action in a mirror).
    """
    if not hasattr(dataset, "mirror_labels"):
        return label
    mirrors = dataset.mirror_labels
    return -1 if mirrors is None or label < 0 else mirrors[label]


class SeededItems(Dataset):
    """Indexes a dataset with ``(index, seed)``: the seed fixes the item's randomness (clip start, flip)."""

    def __init__(self, dataset: Dataset, *, flip: bool = False):
        self.dataset = dataset
        self.flip = flip  # for datasets that do not flip themselves (the synthetic one)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Item:
        index, seed = item
        # The item's seed fixes the dataset's own draws (clip start, flip); fork_rng keeps the process's
        # stream untouched when loading runs in the main process (num_workers=0).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # fetch: a video that cannot be decoded comes back with its reason, for the stream's errors
            sample = self.dataset.fetch(index) if isinstance(self.dataset, VideoClipDataset) else self.dataset[index]
        return self._maybe_flip(sample, seed)

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Item]:
        """Batched fetch, for datasets that render whole batches at once (the synthetic one)."""
        if not hasattr(self.dataset, "__getitems__"):
            return [self[item] for item in items]
        samples = self.dataset.__getitems__([index for index, _ in items])
        return [self._maybe_flip(sample, seed) for sample, (_, seed) in zip(samples, items)]

    def _maybe_flip(self, sample: Item, seed: int) -> Item:
        if not isinstance(sample, dict) or not self.flip:
            return sample
        if torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5:
            sample = dict(sample, video=sample["video"].flip(-1))
            if "label" in sample:
                sample["label"] = flipped_label(self.dataset, sample["label"])
        return sample


class TrainStream:
    """An endless iterator of batches over epochs, with a checkpointable position.

    Videos that cannot be decoded are dropped from their batch and counted in :attr:`skipped` (this
    rank's count over the whole run, saved in :meth:`state_dict`; on rank 0 it starts with the videos
    :func:`build_datasets` left out because their file was missing).

    Until the stream has decoded its first clip, it counts the failed items: after
    ``max(2 * batch_size, 64)`` of them, or once every video of the dataset has failed (one epoch on
    a single process), it raises :class:`DataError` naming the counts and the first reasons, instead of
    skipping forever. Once a clip has been decoded the data is known to be usable, and later failures
    are only skipped and counted (a healthy run with a few bad videos goes on). The bound applies again
    after a resume.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, rank: int, world_size: int,
                 num_workers: int, flip: bool = False):
        self.sampler = ResumableSampler(len(dataset), seed=seed, rank=rank, world_size=world_size,
                                        batch_size=batch_size)
        self.items = SeededItems(dataset, flip=flip)
        self.batch_size, self.num_workers = batch_size, num_workers
        # videos that could not be decoded, over the whole run (this rank); the missing ones once, on rank 0
        missing = dataset.missing if isinstance(dataset, VideoClipDataset) and rank == 0 else 0
        self.skipped = missing
        self.max_attempts = max(2 * batch_size, _MIN_ATTEMPTS)
        self._iterator: Iterator | None = None
        self._reset_failures()

    def _reset_failures(self) -> None:
        self._decoded_any = False  # a clip has been decoded since this stream started or was resumed
        self._attempts = 0  # items that failed before the first decoded clip
        self._failed_indices: set[int] = set()
        self._reasons: Counter[str] = Counter()
        self._first_failure: SkippedVideo | None = None

    def _loader(self) -> DataLoader:
        return DataLoader(
            self.items,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate_skipping_none,
            drop_last=True,
            persistent_workers=False,
            # its own generator: creating an iterator must not draw from the global RNG, or a resumed run
            # (which creates it at another step) would continue with different random numbers
            generator=torch.Generator().manual_seed(derive_seed(self.sampler.seed, _LOADER_KEY, self.sampler.epoch)),
        )

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._iterator is None:
                if len(self.sampler) < self.batch_size:  # a resumed position in the epoch's dropped tail
                    self.sampler.epoch, self.sampler.position = self.sampler.epoch + 1, 0
                self._iterator = iter(self._loader())
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.sampler.epoch, self.sampler.position = self.sampler.epoch + 1, 0
                continue
            self.sampler.position += self.batch_size
            failures = batch.pop("failures", [])
            self.skipped += int(batch.get("skipped", 0))
            if set(batch) <= {"skipped"}:  # nothing decodable in this batch
                if not self._decoded_any:
                    self._count_failures(int(batch.get("skipped", 0)), failures)
                continue
            self._decoded_any = True
            return batch

    def _count_failures(self, count: int, failures: list[SkippedVideo]) -> None:
        """Record failed items before the first decoded clip; raise DataError past the bound."""
        self._attempts += count
        for failure in failures:
            self._failed_indices.add(failure.index)
            self._reasons[failure.reason] += 1
            if self._first_failure is None:
                self._first_failure = failure
        every_video = len(self._failed_indices) >= len(self.items)
        if self._attempts < self.max_attempts and not every_video:
            return
        counts = ", ".join(f'{n} "{reason}"' for reason, n in self._reasons.most_common(_SHOWN_REASONS))
        others = len(self._reasons) - _SHOWN_REASONS
        if others > 0:
            counts += f", {others} other reason(s)"
        first = self._first_failure
        detail = f"{counts}; first: {first.path}: {first.reason}" if first is not None else "no reasons reported"
        if every_video:
            summary = f"no readable clip: all {len(self.items)} videos of the dataset failed ({self._attempts} tries: "
        else:
            summary = f"no readable clip in {self._attempts} tries ({self._attempts} failed: "
        raise DataError(f"{summary}{detail}); check the videos with `larp scan MANIFEST_OR_FOLDER`")

    def state_dict(self) -> dict[str, int]:
        return {**self.sampler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
        self.skipped = int(state.get("skipped", 0))
        self._iterator = None
        self._reset_failures()


def build_datasets(data: DataConfig, *, frames: int, size: int) -> tuple[Dataset, Dataset, bool]:
    """(train, validation, flip_in_stream): videos from a manifest/folder, or the built-in synthetic set.

    Listed files that do not exist are left out up front (one warning; the training set's count is its
    ``missing``, which the stream counts as skipped); a list whose files are all missing is a ValueError
    naming the manifest and the root tried.
    """
    if data.manifest is None:
        common = dict(
            frames=frames,
            size=size,
            num_classes=data.synthetic_classes,
            object_size=data.synthetic_object_size,
            speed=data.synthetic_speed,
            background=data.synthetic_background,
        )
        train = SyntheticVideos(SyntheticConfig(num_videos=data.synthetic_videos, seed=data.synthetic_seed, **common))
        val = SyntheticVideos(SyntheticConfig(num_videos=data.val_videos, seed=data.synthetic_seed + 1, **common))
        return train, val, data.random_flip
    entries, missing = _entries(data.manifest, data.root)
    train = VideoClipDataset(entries, frames=frames, size=size, random_flip=data.random_flip, missing=missing)
    if data.val_manifest is not None:
        val_entries, _ = _entries(data.val_manifest, data.root)
    else:  # no validation list: hold out nothing, validate on a fixed slice of the training videos
        val_entries = entries[: data.val_videos]
    val = VideoClipDataset(val_entries[: data.val_videos], frames=frames, size=size, random_flip=False, clip="start")
    return train, val, False


def _entries(manifest: str, root: str | None) -> tuple[list[VideoEntry], int]:
    """Existing entries of a manifest CSV, a folder of videos, or several joined by '+' (the official
    syntax, e.g. k600_train.csv+ucf101_train.csv), and how many listed files were missing."""
    entries, missing = [], 0
    for part in manifest.split("+"):
        found, lost = load_existing_entries(part, root=root)
        entries += found
        missing += lost
    return entries, missing
