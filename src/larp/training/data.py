"""Training data streams that are exact across processes, workers and resumes.

Each epoch's order is a seeded permutation sharded over ranks, and every sample carries its own seed
(drawn from the same seeded stream), which fixes its random clip start and flip whatever worker loads
it. The sampler's position is part of the checkpoint, so a resumed run continues with the very samples
the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from larp.data.datasets import VideoClipDataset, collate_skipping_none, load_entries
from larp.data.synthetic import SyntheticConfig, SyntheticVideos
from larp.training.recipe import DataConfig

_EPOCH_STRIDE = 1_000_003  # separates the seeds of consecutive epochs


class ResumableSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank; ``position`` samples of the epoch are skipped."""

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch, self.position = 0, 0

    def _epoch_items(self) -> list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + _EPOCH_STRIDE * self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        per_rank = math.ceil(self.size / self.world_size)
        order = order.repeat(math.ceil(per_rank * self.world_size / self.size))[: per_rank * self.world_size]
        seeds = torch.randint(0, 2**62, (len(order),), generator=generator)
        return list(zip(order[self.rank :: self.world_size].tolist(), seeds[self.rank :: self.world_size].tolist()))

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size) - self.position

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

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any] | None:
        index, seed = item
        # The item's seed fixes the dataset's own draws (clip start, flip); fork_rng keeps the process's
        # stream untouched when loading runs in the main process (num_workers=0).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sample = self.dataset[index]
        return self._maybe_flip(sample, seed)

    def __getitems__(self, items: list[tuple[int, int]]) -> list[dict[str, Any] | None]:
        """Batched fetch, for datasets that render whole batches at once (the synthetic one)."""
        if not hasattr(self.dataset, "__getitems__"):
            return [self[item] for item in items]
        samples = self.dataset.__getitems__([index for index, _ in items])
        return [self._maybe_flip(sample, seed) for sample, (_, seed) in zip(samples, items)]

    def _maybe_flip(self, sample: dict[str, Any] | None, seed: int) -> dict[str, Any] | None:
        if sample is None or not self.flip:
            return sample
        if torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5:
            sample = dict(sample, video=sample["video"].flip(-1))
            if "label" in sample:
                sample["label"] = flipped_label(self.dataset, sample["label"])
        return sample


class TrainStream:
    """An endless iterator of batches over epochs, with a checkpointable position."""

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, rank: int, world_size: int,
                 num_workers: int, flip: bool = False):
        self.sampler = ResumableSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
        self.items = SeededItems(dataset, flip=flip)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.skipped = 0  # videos that could not be decoded, over the whole run (this rank)
        self._iterator: Iterator | None = None

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
            generator=torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch),
        )

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._iterator is None:
                if len(self.sampler) < self.batch_size:
                    self.sampler.epoch, self.sampler.position = self.sampler.epoch + 1, 0
                self._iterator = iter(self._loader())
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.sampler.epoch, self.sampler.position = self.sampler.epoch + 1, 0
                continue
            self.sampler.position += self.batch_size
            if batch is None:  # every clip of the batch failed to decode
                self.skipped += self.batch_size
                continue
            self.skipped += int(batch.get("skipped", 0))
            if set(batch) <= {"skipped"}:  # nothing decodable in this batch
                continue
            return batch

    def state_dict(self) -> dict[str, int]:
        return {**self.sampler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
        self.skipped = int(state.get("skipped", 0))
        self._iterator = None


def build_datasets(data: DataConfig, *, frames: int, size: int) -> tuple[Dataset, Dataset, bool]:
    """(train, validation, flip_in_stream): videos from a manifest/folder, or the built-in synthetic set."""
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
    entries = _entries(data.manifest, data.root)
    train = VideoClipDataset(entries, frames=frames, size=size, random_flip=data.random_flip)
    if data.val_manifest is not None:
        val_entries = _entries(data.val_manifest, data.root)
    else:  # no validation list: hold out nothing, validate on a fixed slice of the training videos
        val_entries = entries[: data.val_videos]
    val = VideoClipDataset(val_entries[: data.val_videos], frames=frames, size=size, random_flip=False, clip="start")
    return train, val, False


def _entries(manifest: str, root: str | None):
    """Entries of a manifest CSV, a folder of videos, or several joined by '+' (the official syntax,
    e.g. k600_train.csv+ucf101_train.csv)."""
    return [entry for part in manifest.split("+") for entry in load_entries(part, root=root)]
