"""Training data that cannot be read fails fast with one clear error; a few bad videos are skipped and counted."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

import larp.data.datasets as datasets
from larp.cli import main as cli_main
from larp.data.datasets import VideoClipDataset, VideoEntry, load_existing_entries
from larp.data.synthetic import SyntheticConfig, SyntheticVideos
from larp.data.video_io import write_video
from larp.training.data import DataError, ResumableSampler, TrainStream, build_datasets
from larp.training.recipe import DataConfig

FRAMES, SIZE = 4, 16


def _manifest(folder: Path, names: list[str], name: str = "train.csv") -> Path:
    csv = folder / name
    csv.write_text("path,label\n" + "".join(f"videos/{n},0\n" for n in names))
    return csv


def _good(folder: Path, name: str, seed: int) -> None:
    torch.manual_seed(seed)
    write_video(folder / "videos" / name, torch.rand(3, 6, 20, 24), fps=8)


def _corrupt(folder: Path, name: str) -> None:
    (folder / "videos").mkdir(exist_ok=True)
    (folder / "videos" / name).write_text("this is a text file, not a video\n" * 8)


def _stream(dataset, batch_size: int, *, num_workers: int = 0, rank: int = 0, world_size: int = 1) -> TrainStream:
    return TrainStream(dataset, batch_size=batch_size, seed=0, rank=rank, world_size=world_size,
                       num_workers=num_workers)


def _build(csv: Path, **overrides) -> tuple:
    return build_datasets(DataConfig(manifest=str(csv), val_videos=2, **overrides), frames=FRAMES, size=SIZE)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_manifest_of_corrupt_files_raises_one_data_error(tmp_path, num_workers):
    names = [f"bad{i}.mp4" for i in range(6)]
    for name in names:
        _corrupt(tmp_path, name)
    train, _, _ = _build(_manifest(tmp_path, names))
    stream = _stream(train, batch_size=3, num_workers=num_workers)  # one epoch is two batches
    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        next(stream)
    assert time.perf_counter() - started < 30
    message = str(caught.value)
    # every one of the 6 videos failed once (a single process sees the whole dataset in one epoch)
    assert message.startswith("no readable clip: all 6 videos of the dataset failed")
    # the reason crossed from the worker processes, with its count, and the first file is named
    assert '(6 tries: 6 "Invalid data found when processing input"; first: ' in message
    assert "; first: " in message and "bad" in message.split("; first: ")[1]
    assert "\n" not in message


def test_many_corrupt_files_stop_after_the_bound(tmp_path):
    """A long list of corrupt files stops after max(2 * batch_size, 64) failed items, not one epoch."""
    names = [f"bad{i:03d}.mp4" for i in range(100)]
    for name in names:
        _corrupt(tmp_path, name)
    train, _, _ = _build(_manifest(tmp_path, names))
    stream = _stream(train, batch_size=8)
    with pytest.raises(DataError, match=r"no readable clip in 64 tries \(64 failed: 64 \"Invalid"):
        next(stream)
    assert stream.skipped == 64


def test_the_data_error_counts_each_reason(tmp_path):
    for i in range(2):
        _good(tmp_path, f"short{i}.mp4", seed=i)  # 6 frames: too short for 8 without padding
    for i in range(3):
        _corrupt(tmp_path, f"bad{i}.mp4")
    entries = [VideoEntry(str(path)) for path in sorted((tmp_path / "videos").iterdir())]
    data = VideoClipDataset(entries, frames=8, size=SIZE, pad_short=False)
    with pytest.raises(DataError) as caught:
        next(_stream(data, batch_size=5))
    message = str(caught.value)
    assert '(5 tries: 3 "Invalid data found when processing input", 2 "too short: 6 frames, a clip needs 8"' in message


def test_a_wrong_root_is_an_error_when_the_datasets_are_built(tmp_path):
    names = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    csv = _manifest(tmp_path, names)  # no videos/ folder at all: every file is missing
    wrong = tmp_path / "elsewhere"
    with pytest.raises(ValueError) as caught:
        _build(csv, root=str(wrong))
    message = str(caught.value)
    assert f"all 4 videos of '{csv}' are missing under {wrong}" in message
    assert str(wrong / "videos" / "a.mp4") in message and str(wrong / "videos" / "c.mp4") in message
    assert "d.mp4" not in message  # the first 3 examples only
    assert "data.root" in message and "--root" in message


def test_some_missing_files_are_left_out_with_one_warning_and_counted(tmp_path, caplog):
    _good(tmp_path, "good.mp4", seed=0)
    csv = _manifest(tmp_path, ["gone1.mp4", "good.mp4", "gone2.mp4"])
    with caplog.at_level(logging.WARNING, logger="larp"):
        entries, missing = load_existing_entries(csv)
    assert [Path(e.path).name for e in entries] == ["good.mp4"] and missing == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of the 3 videos" in warnings[0] and "gone1.mp4, " in warnings[0]
    train, _, _ = _build(csv)
    assert len(train) == 1 and train.missing == 2
    assert _stream(train, batch_size=2).skipped == 2  # rank 0 starts its count with them
    assert _stream(train, batch_size=2, rank=1, world_size=2).skipped == 0  # counted once, not per rank


def test_a_few_corrupt_videos_are_skipped_and_counted(tmp_path):
    good, bad = ["good0.mp4", "good1.mp4"], [f"bad{i}.mp4" for i in range(5)]
    for i, name in enumerate(good):
        _good(tmp_path, name, seed=i)
    for name in bad:
        _corrupt(tmp_path, name)
    train, _, _ = _build(_manifest(tmp_path, good + bad))
    stream = _stream(train, batch_size=7)  # one batch is exactly one epoch
    batch = next(stream)
    assert batch["video"].shape == (2, 3, FRAMES, SIZE, SIZE)
    assert sorted(Path(p).name for p in batch["path"]) == good
    assert batch["skipped"] == 5 and stream.skipped == 5 and "failures" not in batch
    for _ in range(3):  # a healthy run goes on: no DataError once clips were decoded
        assert next(stream)["video"].shape[0] == 2
    assert stream.skipped == 20 and stream.state_dict()["skipped"] == 20
    resumed = _stream(train, batch_size=7)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.skipped == 20


def test_a_bug_in_the_dataset_propagates(tmp_path, monkeypatch):
    _good(tmp_path, "good.mp4", seed=0)
    train, _, _ = _build(_manifest(tmp_path, ["good.mp4"]))

    def broken(*args, **kwargs):
        raise TypeError("a bug, not a bad video")

    monkeypatch.setattr(datasets, "read_video", broken)
    with pytest.raises(TypeError, match="a bug, not a bad video"):
        train[0]
    with pytest.raises(TypeError, match="a bug, not a bad video"):
        next(_stream(train, batch_size=1))


def test_a_dataset_smaller_than_a_batch_gives_full_batches(tmp_path):
    for i in range(2):
        _good(tmp_path, f"good{i}.mp4", seed=i)
    train, _, _ = _build(_manifest(tmp_path, ["good0.mp4", "good1.mp4"]))
    stream = _stream(train, batch_size=5)
    batches = [next(stream) for _ in range(2)]
    for batch in batches:
        assert batch["video"].shape == (5, 3, FRAMES, SIZE, SIZE) and batch["skipped"] == 0
        assert sorted(set(batch["index"].tolist())) == [0, 1]  # the epoch order, repeated
    assert stream.sampler.epoch == 1  # one batch per epoch, and the stream moved on


def test_the_sampler_fills_every_rank_of_a_small_dataset():
    for rank in range(3):
        sampler = ResumableSampler(4, seed=3, rank=rank, world_size=3, batch_size=5)
        items = list(sampler)
        assert len(sampler) == len(items) == 5
        assert all(0 <= index < 4 for index, _ in items)
        assert len({seed for _, seed in items}) == 5  # repeats get their own clip seeds
    # a dataset large enough keeps its exact sharding: ceil(10 / 3) items per rank
    assert [len(ResumableSampler(10, seed=0, rank=r, world_size=3, batch_size=2)) for r in range(3)] == [4, 4, 4]


def test_epoch_orders_are_seeded_per_epoch():
    sampler = ResumableSampler(50, seed=7, batch_size=1)
    first = list(sampler)
    sampler.epoch = 1
    second = list(sampler)
    assert [i for i, _ in first] != [i for i, _ in second]
    again = ResumableSampler(50, seed=7, batch_size=1)
    assert list(again) == first
    assert [i for i, _ in ResumableSampler(50, seed=8, batch_size=1)] != [i for i, _ in first]


def test_a_small_synthetic_set_streams_full_batches():
    data = SyntheticVideos(SyntheticConfig(num_videos=3, frames=FRAMES, size=SIZE))
    stream = _stream(data, batch_size=4, world_size=2)
    assert next(stream)["video"].shape == (4, 3, FRAMES, SIZE, SIZE)


def test_a_manifest_listing_no_video_is_an_error(tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("path,label\n")
    with pytest.raises(ValueError, match="lists no videos"):
        _build(csv)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no videos under the folder"):
        _build(tmp_path / "nothing")


def test_a_too_short_video_without_padding_is_skipped(tmp_path):
    _good(tmp_path, "good.mp4", seed=0)
    data = VideoClipDataset([VideoEntry(str(tmp_path / "videos" / "good.mp4"))], frames=8, size=SIZE,
                            pad_short=False)
    failure = data.fetch(0)
    assert failure.reason == "too short: 6 frames, a clip needs 8" and data[0] is None


def test_scan_json_to_a_folder_is_refused_and_leaves_no_file(tmp_path, capsys):
    _good(tmp_path, "good.mp4", seed=0)
    out = tmp_path / "report"
    out.mkdir()
    assert cli_main.main(["scan", str(tmp_path / "videos"), "--workers", "0", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"--json {out} is a folder; expected a file" in err
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["report", "videos"]
    assert cli_main.main(["scan", str(tmp_path / "videos"), "--workers", "0", "--json", str(out / "s.json")]) == 1
    assert [p.name for p in out.iterdir()] == ["s.json"]  # 6 frames < 16: a problem, still a report
