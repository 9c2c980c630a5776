"""larp.data.scan and ``larp scan`` on a small generated dataset with every kind of problem."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from larp.cli import data_commands
from larp.cli import main as cli_main
from larp.data.datasets import VideoEntry, find_videos
from larp.data.scan import scan_videos
from larp.data.video_io import write_video


def clip(frames: int, level: float) -> torch.Tensor:
    video = torch.full((3, frames, 16, 16), level)
    video[:, :, :, :8] = 0.9  # some structure
    return video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scan")
    files = {
        "a": root / "train" / "a.mp4",
        "b": root / "train" / "b.mp4",
        "short": root / "train" / "short.mp4",
        "val_x": root / "val" / "x.mp4",
        "val_a": root / "val" / "a.mp4",  # same name as train/a.mp4, different content
    }
    for i, key in enumerate(["a", "b", "val_x", "val_a"]):
        write_video(files[key], clip(20, 0.1 + 0.2 * i), fps=8)
    write_video(files["short"], clip(6, 0.5), fps=8)
    files["copy"] = root / "train" / "copy_of_b.mp4"  # same bytes as b
    shutil.copy(files["b"], files["copy"])
    files["val_copy"] = root / "val" / "leak.mp4"  # same bytes as train/a.mp4
    shutil.copy(files["a"], files["val_copy"])
    files["corrupt"] = root / "train" / "corrupt.mp4"
    files["corrupt"].write_bytes(b"not a video at all" * 50)
    files["missing"] = root / "train" / "missing.mp4"
    return files


def entries(files: dict[str, Path], *keys: str) -> list[VideoEntry]:
    return [VideoEntry(str(files[k])) for k in keys]


def test_scan_finds_every_problem(dataset):
    train = entries(dataset, "a", "b", "short", "copy", "corrupt", "missing", "a")  # a listed twice
    val = entries(dataset, "val_x", "val_a", "val_copy")
    report = scan_videos(train, frames=16, val_entries=val, workers=0, progress=False)
    assert report.num_videos == 7 and report.num_val_videos == 3 and report.num_readable == 8
    assert {p.path for p in report.unreadable} == {str(dataset["corrupt"]), str(dataset["missing"])}
    missing = next(p for p in report.unreadable if p.path == str(dataset["missing"]))
    assert "not found" in missing.reason and missing.split == "train"
    assert [(p.path, p.num_frames) for p in report.too_short] == [(str(dataset["short"]), 6)]
    assert [(d.split, d.paths) for d in report.duplicate_paths] == [("train", (str(dataset["a"]),) * 2)]
    assert [set(d.paths) for d in report.duplicate_content] == [{str(dataset["b"]), str(dataset["copy"])}]
    assert [(o.key, o.train, o.val) for o in report.name_overlap] == [
        ("a.mp4", (str(dataset["a"]),) * 2, (str(dataset["val_a"]),))
    ]
    overlap = [(o.train, o.val) for o in report.content_overlap]
    assert overlap == [((str(dataset["a"]),) * 2, (str(dataset["val_copy"]),))]
    assert report.frame_stats == {"min": 6, "median": 20, "max": 20}
    assert report.num_problems == 7 and not report.clean
    json.dumps(report.to_dict())  # JSON-ready


def test_scan_clean_and_with_worker_processes(dataset):
    train = entries(dataset, "a", "b")
    val = entries(dataset, "val_x")
    serial = scan_videos(train, frames=16, val_entries=val, workers=0, progress=False)
    assert serial.clean and serial.num_problems == 0 and serial.num_readable == 3
    parallel = scan_videos(entries(dataset, "a", "b", "copy", "corrupt", "short"), frames=16, workers=2, progress=False)
    assert len(parallel.unreadable) == 1 and len(parallel.too_short) == 1 and len(parallel.duplicate_content) == 1
    # the same file under two names (a link) is one file listed twice, not a content duplicate
    link = dataset["a"].parent / "link_to_a.mp4"
    if not link.exists():
        link.symlink_to(dataset["a"])
    linked = scan_videos(entries(dataset, "a") + [VideoEntry(str(link))], frames=8, workers=0, progress=False)
    assert len(linked.duplicate_paths) == 1 and not linked.duplicate_content
    with pytest.raises(ValueError, match="frames"):
        scan_videos(train, frames=0)


@pytest.fixture
def cli(monkeypatch):
    """``larp.cli.main.main`` with ``scan`` registered (whether or not main.py registers it yet)."""
    build = cli_main.build_parser

    def build_with_scan() -> argparse.ArgumentParser:
        parser = build()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "scan" not in commands.choices:
            data_commands.register(commands)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build_with_scan)
    return cli_main.main


def test_cli_scan_manifest_with_problems(tmp_path, dataset, cli, capsys):
    root = dataset["a"].parents[1]
    manifest = tmp_path / "train.csv"
    manifest.write_text(
        "id,path,action,label\n"
        "0,train/a.mp4,x,0\n1,train/copy_of_b.mp4,x,0\n2,train/b.mp4,x,1\n3,train/corrupt.mp4,x,1\n"
    )
    out = tmp_path / "report" / "scan.json"
    code = cli(
        ["scan", str(manifest), "--root", str(root), "--val", str(root / "val"), "--workers", "0", "--json", str(out)]
    )
    assert code == 1
    text = capsys.readouterr().out
    assert "scanned 4 training + 3 validation videos" in text
    assert "unreadable: 1" in text and "corrupt.mp4" in text
    assert "duplicate content (same bytes): 1" in text
    assert "train/val overlap by file name: 1" in text and "train/val overlap by content: 1" in text
    assert "problem(s) found" in text
    report = json.loads(out.read_text())
    assert report["clean"] is False and report["num_videos"] == 4 and len(report["unreadable"]) == 1
    assert report["content_overlap"][0]["val"] == [str(root / "val" / "leak.mp4")]


def test_cli_scan_clean_folder(tmp_path, dataset, cli, capsys):
    folder = tmp_path / "clean" / "cls"
    folder.mkdir(parents=True)
    for key in ("a", "b"):
        shutil.copy(dataset[key], folder / dataset[key].name)
    assert len(find_videos(folder.parent)) == 2
    assert cli(["scan", str(folder.parent), "--frames", "16"]) == 0
    text = capsys.readouterr().out
    assert "scanned 2 training videos" in text and "no problems found" in text
    assert "frames per video: min 20, median 20, max 20" in text


def test_cli_scan_bad_arguments(tmp_path, cli, capsys):
    assert cli(["scan", str(tmp_path / "nothing.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli(["scan", str(tmp_path), "--frames", "0"]) == 1
    assert "--frames must be at least 1" in capsys.readouterr().err
