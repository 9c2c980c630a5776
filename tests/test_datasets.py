"""larp.data.datasets: manifests, folders and the clip dataset, on small generated videos."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from larp.data.datasets import (
    SkippedVideo,
    VideoClipDataset,
    VideoEntry,
    collate_skipping_none,
    find_videos,
    load_entries,
    read_manifest,
    ucf101_action,
)
from larp.data.video_io import write_video

LEVEL0, STEP = 20, 9  # brightness of frame k's left half: (LEVEL0 + STEP * k) / 255


def coded_video(frames: int, height: int = 40, width: int = 48) -> torch.Tensor:
    """(3, t, h, w): frame k has its left half at level LEVEL0 + STEP * k and its right half black."""
    video = torch.zeros(3, frames, height, width)
    for k in range(frames):
        video[:, k, :, : width // 2] = (LEVEL0 + STEP * k) / 255
    return video


def frame_indices(clip: torch.Tensor) -> list[int]:
    """Decode the frame numbers of a (3, t, s, s) clip made from coded_video (either orientation)."""
    s = clip.shape[-1]
    halves = torch.stack([clip[..., : s // 4].mean((0, 2, 3)), clip[..., -s // 4 :].mean((0, 2, 3))])
    level = halves.max(0).values * 255
    return [round(v) for v in ((level - LEVEL0) / STEP).tolist()]


def is_flipped(clip: torch.Tensor) -> bool:
    s = clip.shape[-1]
    return bool(clip[..., -s // 4 :].mean() > clip[..., : s // 4].mean())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """A folder tree of small mp4 files, plus a short and a corrupt one."""
    root = tmp_path_factory.mktemp("videos")
    files = {
        "b": root / "ClassB" / "v_ClassB_g01_c01.mp4",
        "a": root / "ClassA" / "v_ClassA_g01_c01.mp4",
        "lower": root / "classa" / "clip.mp4",  # sorts after the capitalised names (case-sensitive)
    }
    for path in files.values():
        write_video(path, coded_video(24), fps=8)
    files["short"] = root / "flat" / "short.mp4"
    write_video(files["short"], coded_video(10), fps=8)
    files["corrupt"] = root / "flat" / "corrupt.mp4"
    files["corrupt"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return files


# ------------------------------------------------------------------------ manifests


def test_read_manifest_official_layout(tmp_path, videos):
    # The official lists live in <repo>/data/metadata/ and name videos relative to <repo>.
    repo = tmp_path / "repo"
    metadata = repo / "data" / "metadata"
    metadata.mkdir(parents=True)
    (repo / "data" / "ucf").symlink_to(videos["a"].parents[1])
    csv = metadata / "ucf101_train.csv"
    csv.write_text(
        "id,path,action,label\n"
        "0,data/ucf/ClassA/v_ClassA_g01_c01.mp4,ClassA,0\n"
        "1,data/ucf/ClassB/v_ClassB_g01_c01.mp4,ClassB,1\n"
        f"2,{videos['short']},flat,\n"  # absolute path; empty label
    )
    entries = read_manifest(csv)  # no root: found two levels up, next to data/
    assert entries == [
        VideoEntry(str(repo / "data/ucf/ClassA/v_ClassA_g01_c01.mp4"), 0, "ClassA"),
        VideoEntry(str(repo / "data/ucf/ClassB/v_ClassB_g01_c01.mp4"), 1, "ClassB"),
        VideoEntry(str(videos["short"]), -1, "flat"),
    ]
    assert all(Path(e.path).is_file() for e in entries)
    # an explicit root wins
    rooted = read_manifest(csv, root=tmp_path / "elsewhere")
    assert rooted[0].path == str(tmp_path / "elsewhere/data/ucf/ClassA/v_ClassA_g01_c01.mp4")
    assert load_entries(csv) == entries


def test_read_manifest_relative_to_its_folder_and_ucf_labels(tmp_path):
    # Only a path column, UCF-101 names: labels follow the case-sensitive sorted action names.
    csv = tmp_path / "list.csv"
    csv.write_text(
        "path\n"
        "x/v_Hammering_g01_c01.avi\n"
        "x/v_HammerThrow_g02_c03.avi\n"
        "x/v_Archery_g01_c01.avi\n"
        '"x/v_Hammering_g03_c04.avi"\n'
    )
    entries = read_manifest(csv)
    assert [e.label for e in entries] == [2, 1, 0, 2]  # Archery < HammerThrow < Hammering
    assert [e.action for e in entries] == ["Hammering", "HammerThrow", "Archery", "Hammering"]
    assert entries[0].path == str(tmp_path / "x" / "v_Hammering_g01_c01.avi")  # nothing exists: the csv's folder
    assert ucf101_action("a/v_ApplyEyeMakeup_g08_c01.avi") == "ApplyEyeMakeup" and ucf101_action("clip.mp4") is None
    # other names without a label column: unlabelled
    other = tmp_path / "other.csv"
    other.write_text("path\nclip.mp4\n")
    assert read_manifest(other)[0].label == -1


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.mp4,0\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        read_manifest(bad)
    bad.write_text("path,label\na.mp4,zero\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: label 'zero'"):
        read_manifest(bad)
    with pytest.raises(ValueError, match="is a video"):
        load_entries(_touch(tmp_path / "v.mp4"))
    with pytest.raises(FileNotFoundError):
        load_entries(tmp_path / "nothing")


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def test_find_videos(videos, tmp_path):
    root = videos["a"].parents[1]
    (root / ".hidden").mkdir(exist_ok=True)
    (root / ".hidden" / "x.mp4").write_bytes(b"")
    (root / "notes.txt").write_text("not a video")
    entries = find_videos(root)
    by_name = {Path(e.path).name: e for e in entries}
    expected = ["v_ClassA_g01_c01.mp4", "v_ClassB_g01_c01.mp4", "clip.mp4", "short.mp4", "corrupt.mp4"]
    assert sorted(by_name) == sorted(expected)
    # classes: sorted folder names, case-sensitive: ClassA, ClassB, classa, flat
    assert by_name["v_ClassA_g01_c01.mp4"].label == 0 and by_name["v_ClassB_g01_c01.mp4"].label == 1
    assert by_name["clip.mp4"].label == 2 and by_name["short.mp4"] == VideoEntry(str(videos["short"]), 3, "flat")
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    # a flat folder: unlabelled
    flat = find_videos(videos["short"].parent)
    assert {e.label for e in flat} == {-1} and len(flat) == 2
    assert load_entries(root) == entries
    with pytest.raises(NotADirectoryError):
        find_videos(videos["a"])


# --------------------------------------------------------------------------- clips


def test_random_clips_vary_and_are_reproducible(videos):
    data = VideoClipDataset([VideoEntry(str(videos["a"]), 0)], frames=8, size=32, random_flip=False)
    assert len(data) == 1 and data.num_frames(0) == 24
    torch.manual_seed(0)
    first = [frame_indices(data[0]["video"]) for _ in range(8)]
    for frames in first:
        assert frames == list(range(frames[0], frames[0] + 8)) and 0 <= frames[0] <= 16  # consecutive, in range
    assert len({f[0] for f in first}) > 1  # different starts across calls
    torch.manual_seed(0)
    assert [frame_indices(data[0]["video"]) for _ in range(8)] == first  # same seed, same clips
    item = data[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert item["label"] == 0 and item["index"] == 0 and item["path"] == str(videos["a"])
    start = VideoClipDataset([VideoEntry(str(videos["a"]))], frames=4, size=32, stride=3, clip="start")
    assert frame_indices(start[0]["video"]) == [0, 3, 6, 9]


def test_flip(videos):
    entries = [VideoEntry(str(videos["a"]))]
    torch.manual_seed(1)
    flips = [is_flipped(VideoClipDataset(entries, frames=4, size=32)[0]["video"]) for _ in range(16)]
    assert any(flips) and not all(flips)
    no_flip = VideoClipDataset(entries, frames=4, size=32, random_flip=False)
    assert not any(is_flipped(no_flip[0]["video"]) for _ in range(8))
    # a flip mirrors the whole clip: every frame is the mirror of the unflipped one
    torch.manual_seed(2)
    data = VideoClipDataset(entries, frames=4, size=32, clip="start")
    clips = [data[0]["video"] for _ in range(8)]
    plain = next(c for c in clips if not is_flipped(c))
    mirrored = next(c for c in clips if is_flipped(c))
    assert torch.equal(mirrored, plain.flip(-1))


def test_short_video_padding(videos, caplog):
    data = VideoClipDataset([VideoEntry(str(videos["short"]))], frames=16, size=32, random_flip=False)
    assert frame_indices(data[0]["video"]) == list(range(10)) + [9] * 6  # last frame repeated
    strict = VideoClipDataset([VideoEntry(str(videos["short"]))], frames=16, size=32, pad_short=False)
    with caplog.at_level(logging.WARNING, logger="larp"):
        assert strict[0] is None
    assert "short.mp4" in caplog.text and "too short: 10 frames, a clip needs 16" in caplog.text


def test_corrupt_video_is_skipped_and_counted(videos, caplog):
    entries = [VideoEntry(str(videos[k]), i) for i, k in enumerate(["a", "corrupt", "b", "lower"])]
    data = VideoClipDataset(entries, frames=8, size=32)
    with caplog.at_level(logging.WARNING, logger="larp"):
        assert data[1] is None
        assert data[1] is None  # a second failure of the same file only goes to debug
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(videos["corrupt"]) in warnings[0].getMessage()

    loader = DataLoader(data, batch_size=2, num_workers=0, collate_fn=collate_skipping_none)
    batches = list(loader)
    assert [b["skipped"] for b in batches] == [1, 0]
    assert batches[0]["video"].shape == (1, 3, 8, 32, 32) and batches[0]["label"].tolist() == [0]
    assert batches[1]["index"].tolist() == [2, 3]
    # a batch of nothing but bad videos; the reasons of fetch()'s records travel with the batch
    only_bad = collate_skipping_none([None, None])
    assert only_bad == {"skipped": 2, "failures": []}
    failure = data.fetch(1)
    assert failure == SkippedVideo(1, str(videos["corrupt"]), "Invalid data found when processing input")
    mixed = collate_skipping_none([data.fetch(0), failure])
    assert mixed["skipped"] == 1 and mixed["failures"] == [failure] and mixed["index"].tolist() == [0]


def _log_to_stderr(worker_id: int) -> None:
    # Records of worker processes do not reach pytest's log capture; send them to fd 2 instead.
    logging.getLogger("larp").addHandler(logging.StreamHandler(sys.__stderr__))


def test_corrupt_video_skipped_with_workers(videos, capfd):
    entries = [VideoEntry(str(videos[k]), i) for i, k in enumerate(["a", "corrupt", "b", "lower", "corrupt", "a"])]
    data = VideoClipDataset(entries, frames=8, size=32)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        loader = DataLoader(
            data, batch_size=2, num_workers=2, collate_fn=collate_skipping_none, worker_init_fn=_log_to_stderr
        )
        runs.append(list(loader))
    batches = runs[0]
    assert sum(b["skipped"] for b in batches) == 2 and sum(len(b["index"]) for b in batches) == 4
    assert sorted(i for b in batches for i in b["index"].tolist()) == [0, 2, 3, 5]
    # the same seed gives the same clips (starts and flips) through the workers
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(runs[0], runs[1]))
    err = capfd.readouterr().err
    assert f"skipping video {videos['corrupt']}" in err


def test_dataset_argument_errors(videos):
    entries = [VideoEntry(str(videos["a"]))]
    with pytest.raises(ValueError, match="frames"):
        VideoClipDataset(entries, frames=0)
    with pytest.raises(ValueError, match="clip"):
        VideoClipDataset(entries, clip="middle")
