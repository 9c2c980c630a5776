"""Token datasets (``larp tokenize --manifest``): the Parquet schema, rows equal to ``tokenize_video``, bad files
in _failed.jsonl, resume after a kill, the same rows from 2 gloo processes, refused reruns, TokenWindows."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import larp
from larp.cli.main import main
from larp.data import token_dataset
from larp.data.datasets import VideoEntry
from larp.data.token_dataset import (
    TokenWindows,
    is_token_dataset,
    read_dataset_info,
    read_rows,
    shard_paths,
    token_type,
    write_dataset_info,
    write_shard,
    write_token_dataset,
)
from larp.data.video_io import write_video
from larp.files import FolderLock
from larp.training.token_cache import tokenizer_fingerprint
from larp.video_tokens import window_plan
from tests.conftest import perturb_

REPO = Path(__file__).resolve().parents[1]

# (frames, width, height, fps): mixed sizes and lengths, odd ones included
VIDEOS = [(15, 64, 48, 25), (17, 48, 64, 30), (1, 40, 40, 24), (33, 96, 32, 25), (20, 50, 30, 24), (16, 32, 32, 30),
          (40, 64, 48, 25), (5, 30, 50, 30)]
CORRUPT = {2: b"", 6: b"not a video at all" * 50}  # inserted before these positions of the manifest


def make_videos(folder: Path) -> list[VideoEntry]:
    """8 small videos (labels 0..3, one unknown) and 2 corrupt files, in manifest order."""
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[VideoEntry] = []
    for i, (frames, width, height, fps) in enumerate(VIDEOS):
        if i in CORRUPT:
            bad = folder / f"bad{i}.mp4"
            bad.write_bytes(CORRUPT[i])
            entries.append(VideoEntry(str(bad), label=1))
        t = torch.linspace(0, 1, frames)[:, None, None]
        x = torch.linspace(0, 1, width)[None, None, :]
        y = torch.linspace(0, 1, height)[None, :, None]
        shape = (frames, height, width)
        video = torch.stack([((x + t) % 1).expand(shape), y.expand(shape), ((x * y + i / 8) % 1).expand(shape)])
        path = folder / f"v{i}.mp4"
        write_video(path, video, fps=fps)
        entries.append(VideoEntry(str(path), label=-1 if i == 3 else i % 4))
    return entries


def write_manifest(path: Path, entries: list[VideoEntry]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([e.path, e.label if e.label >= 0 else ""] for e in entries)
    return path


@pytest.fixture(scope="module")
def tokenizer() -> larp.LARPTokenizer:
    torch.manual_seed(1)
    return perturb_(larp.LARPTokenizer.from_preset("larp-tiny"), seed=1).eval()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[VideoEntry]:
    return make_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, videos, tokenizer) -> Path:
    """The dataset of ``videos``: 3 videos per shard, 2 decoding workers, 4 windows per forward."""
    out = tmp_path_factory.mktemp("dataset") / "ds"
    write_token_dataset(videos, tokenizer, out, window_plan(tokenizer), videos_per_shard=3, batch_size=4,
                        num_workers=2, progress=False, tokenizer_id="tiny")
    return out


def rows_of(folder: Path) -> list[dict]:
    return read_rows(folder).to_pylist()


def test_schema_counts_and_info(dataset, videos, tokenizer):
    info = read_dataset_info(dataset)
    assert info["format"] == "larp-token-dataset" and info["version"] == 1 and info["complete"] is True
    assert (info["num_videos"], info["num_failed"], info["shards"]) == (
        8, 2, ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet", "shard-00003.parquet"])
    assert (info["tokens_per_window"], info["frames_per_window"], info["codebook_size"], info["size"]) == (
        32, 16, 256, 32)
    assert info["tokenizer"] == "tiny" and info["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert (info["fps"], info["stride"], info["resize"]) == (None, None, "crop")
    assert info["special_tokens"]["code_pattern"] == "<|v{id}|>"
    # windows: ceil(frames / 16) per readable video
    assert info["num_windows"] == sum(-(-frames // 16) for frames, *_ in VIDEOS) == 14
    schema = pq.read_schema(dataset / "shard-00000.parquet")
    assert schema.field("tokens").type == pa.list_(pa.uint16())
    assert schema.field("label").type == pa.int64() and schema.field("window_lengths").type == pa.list_(pa.int32())
    assert {"video", "fps", "start", "pad_frames", "num_windows", "source_fps", "source_frames", "source_width",
            "source_height"} <= set(schema.names)
    # the folder itself is a Parquet dataset (the side files start with "_"); the rows are in manifest order
    table = pq.read_table(dataset)
    assert table.num_rows == 8 and table.equals(pq.read_table([str(p) for p in shard_paths(dataset)]))
    assert table.column("video").to_pylist() == [e.path for e in videos if "bad" not in e.path]
    hidden = [p.relative_to(dataset).as_posix() for p in dataset.rglob(".*")]
    assert sorted(hidden) == [".lock", ".progress"]  # no temp file left


def test_other_readers_take_the_folder(dataset):
    pandas = pytest.importorskip("pandas", reason="pandas is not installed")
    frame = pandas.read_parquet(dataset)
    assert len(frame) == 8 and frame["num_windows"].sum() == 14


def test_hf_datasets_loads_the_folder(dataset, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="HF datasets is not installed (pip install datasets)")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # its cache, out of the user's
    loaded = datasets.load_dataset(str(dataset), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 8 and sum(loaded["num_windows"]) == 14
    assert loaded[0]["video"] == pq.read_table(dataset).column("video")[0].as_py()


def test_a_dataset_written_with_the_old_side_file_names_is_still_read(dataset, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for shard in shard_paths(dataset):
        (old / shard.name).write_bytes(shard.read_bytes())
    (old / "dataset.json").write_text((dataset / "_dataset.json").read_text())
    assert is_token_dataset(old) and read_dataset_info(old) == read_dataset_info(dataset)
    assert rows_of(old) == rows_of(dataset) and len(TokenWindows(old)) == 14


def test_rows_equal_tokenize_video(dataset, videos, tokenizer):
    rows = rows_of(dataset)
    good = [e for e in videos if "bad" not in e.path]
    for row, entry, (frames, width, height, fps) in zip(rows, good, VIDEOS):
        expected = larp.tokenize_video(entry.path, tokenizer)
        assert np.array_equal(np.asarray(row["tokens"]).reshape(expected.ids.shape), expected.ids), entry.path
        assert row["window_lengths"] == [32] * expected.ids.shape[0] == [32] * row["num_windows"]
        assert row["label"] == (None if entry.label < 0 else entry.label)
        assert (row["source_width"], row["source_height"], row["source_frames"]) == (width, height, frames)
        assert row["fps"] == pytest.approx(fps) and row["source_fps"] == pytest.approx(fps)
        assert row["pad_frames"] == expected.info["pad_frames"] == -frames % 16 and row["start"] == 0.0


def test_corrupt_files_are_listed_with_the_reason(dataset):
    failed = [json.loads(line) for line in (dataset / "_failed.jsonl").read_text().splitlines()]
    assert [Path(r["video"]).name for r in failed] == ["bad2.mp4", "bad6.mp4"]
    assert all(r["reason"] for r in failed)


def test_token_windows_serves_every_full_window_with_its_label(dataset):
    windows = TokenWindows(dataset)
    rows = rows_of(dataset)
    expected = [(ids, -1 if row["label"] is None else row["label"])
                for row in rows for ids in np.asarray(row["tokens"]).reshape(-1, 32)]
    assert len(windows) == len(expected) == 14
    for i, (ids, label) in enumerate(expected):
        item = windows[i]
        assert item["tokens"].dtype == torch.int64
        assert torch.equal(item["tokens"], torch.from_numpy(ids.astype(np.int64)))
        assert item["label"] == label and "cond" not in item


def test_resume_after_a_kill_gives_the_same_rows(tmp_path, dataset, videos, tokenizer, monkeypatch):
    out = tmp_path / "ds"
    plan = window_plan(tokenizer)
    real = token_dataset.write_shard

    def dies_at_shard_2(path, rows, codebook_size):
        if Path(path).name == "shard-00002.parquet":
            raise KeyboardInterrupt  # a kill in the middle of shard 2
        real(path, rows, codebook_size)

    monkeypatch.setattr(token_dataset, "write_shard", dies_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        write_token_dataset(videos, tokenizer, out, plan, videos_per_shard=3, batch_size=4, num_workers=0,
                            progress=False, tokenizer_id="tiny")
    assert read_dataset_info(out)["complete"] is False
    assert [p.name for p in shard_paths(out)] == ["shard-00000.parquet", "shard-00001.parquet"]
    kept = (out / "shard-00000.parquet").stat().st_mtime_ns
    monkeypatch.setattr(token_dataset, "write_shard", real)
    info = write_token_dataset(videos, tokenizer, out, plan, videos_per_shard=3, batch_size=4, num_workers=0,
                               progress=False, tokenizer_id="tiny")
    assert info["complete"] is True and info["num_videos"] == 8
    assert (out / "shard-00000.parquet").stat().st_mtime_ns == kept  # finished shards are not redone
    assert rows_of(out) == rows_of(dataset)
    assert (out / "_failed.jsonl").read_text() == (dataset / "_failed.jsonl").read_text()


def test_a_rerun_with_other_settings_or_tokenizer_is_refused(tmp_path, videos, tokenizer):
    out = tmp_path / "ds"
    entries = videos[:2]
    write_token_dataset(entries, tokenizer, out, window_plan(tokenizer), num_workers=0, progress=False)
    with pytest.raises(ValueError, match="other settings.*resize 'crop' -> 'pad'"):
        write_token_dataset(entries, tokenizer, out, window_plan(tokenizer, resize="pad"), num_workers=0,
                            progress=False)
    other = perturb_(larp.LARPTokenizer.from_preset("larp-tiny"), seed=5).eval()
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        write_token_dataset(entries, other, out, window_plan(other), num_workers=0, progress=False)
    with pytest.raises(ValueError, match="num_entries"):
        write_token_dataset(videos[:3], tokenizer, out, window_plan(tokenizer), num_workers=0, progress=False)
    assert read_dataset_info(out)["complete"] is True  # the refused runs changed nothing


def test_a_second_tokenization_of_the_same_folder_is_refused(tmp_path, videos, tokenizer):
    with FolderLock(tmp_path / "ds", what="tokenization"):
        with pytest.raises(ValueError, match="another tokenization is writing there"):
            write_token_dataset(videos[:1], tokenizer, tmp_path / "ds", window_plan(tokenizer), num_workers=0,
                                progress=False)
    assert not (tmp_path / "ds" / "_dataset.json").exists()


def test_write_shard_types_and_checks(tmp_path):
    assert token_type(65536) == pa.uint16() and token_type(65537) == pa.int32()
    write_dataset_info(tmp_path, {"tokens_per_window": 2, "codebook_size": 70000})
    write_shard(tmp_path / "shard-00000.parquet", [{"video": "a", "label": 3, "tokens": [69999, 0, 5, 6],
                                                    "window_lengths": [2, 2], "cond_tokens": [1, 2, 3, 4]}], 70000)
    write_shard(tmp_path / "shard-00001.parquet", [], 70000)  # a shard whose videos all failed
    table = read_rows(tmp_path)
    assert table.schema.field("tokens").type == pa.list_(pa.int32()) and table.num_rows == 1
    windows = TokenWindows(tmp_path)
    assert len(windows) == 2 and windows[0]["tokens"].tolist() == [69999, 0] and windows[1]["cond"].tolist() == [3, 4]
    with pytest.raises(ValueError, match="outside"):
        write_shard(tmp_path / "x.parquet", [{"video": "a", "tokens": [256]}], 256)
    with pytest.raises(ValueError, match="window_lengths add up to 3"):
        write_shard(tmp_path / "x.parquet", [{"video": "a", "tokens": [1, 2], "window_lengths": [3]}], 256)
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(FileNotFoundError, match="no _dataset.json"):
        read_dataset_info(tmp_path / "nothing")


def test_a_bug_while_decoding_propagates(tmp_path, videos, tokenizer, monkeypatch):
    class Broken:
        def __init__(self, path, plan):
            raise RuntimeError("a bug, not a bad file")

    monkeypatch.setattr(token_dataset, "VideoWindows", Broken)
    with pytest.raises(RuntimeError, match="a bug, not a bad file"):
        write_token_dataset(videos[:2], tokenizer, tmp_path / "ds", window_plan(tokenizer), num_workers=0,
                            progress=False)
    assert not shard_paths(tmp_path / "ds")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_and_two_gloo_processes_give_the_same_rows(tmp_path, videos, tokenizer, capsys):
    tokenizer_dir = str(tokenizer.save_pretrained(tmp_path / "tokenizer"))
    manifest = write_manifest(tmp_path / "videos.csv", videos)
    common = ["--tokenizer", tokenizer_dir, "--videos-per-shard", "3", "--num-workers", "0", "--device", "cpu"]
    assert main(["-q", "tokenize", "--manifest", str(manifest), "-o", str(tmp_path / "one"), *common]) == 0
    printed = capsys.readouterr().out
    assert "8 videos, 14 windows" in printed and "2 failed" in printed
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "larp", "-q", "tokenize", "--manifest", str(manifest), "-o", str(tmp_path / "two"),
               *common]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert rows_of(tmp_path / "two") == rows_of(tmp_path / "one")
    one, two = read_dataset_info(tmp_path / "one"), read_dataset_info(tmp_path / "two")
    assert {k: v for k, v in one.items() if k != "source"} == {k: v for k, v in two.items() if k != "source"}
    assert (tmp_path / "two" / "_failed.jsonl").read_text() == (tmp_path / "one" / "_failed.jsonl").read_text()


def test_larp_info_describes_a_token_dataset(dataset, capsys):
    assert main(["info", str(dataset)]) == 0
    text = capsys.readouterr().out
    assert "8 videos, 14 windows, 2 failed" in text and "32 per window, codebook 256" in text
    assert "pyarrow.parquet.read_table" in text


@pytest.fixture(scope="module")
def nested_tokenizer() -> larp.LARPTokenizer:
    import dataclasses

    torch.manual_seed(3)
    config = dataclasses.replace(larp.LARPTokenizer.from_preset("larp-tiny").config, nested_dropout=True)
    return perturb_(larp.LARPTokenizer(config), seed=3).eval()


def test_token_windows_serves_variable_lengths_padded_with_minus_one(tmp_path):
    write_dataset_info(tmp_path, {"tokens_per_window": 4, "codebook_size": 256})
    write_shard(tmp_path / "shard-00000.parquet",
                [{"video": "a", "label": 2, "tokens": [7, 8, 9, 1, 2, 3, 4], "window_lengths": [3, 4]},
                 {"video": "b", "label": None, "tokens": [5], "window_lengths": [1]}], 256)
    fixed = TokenWindows(tmp_path)  # no budget recorded: a fixed-length dataset serves its full windows only
    assert len(fixed) == 1 and fixed[0]["tokens"].tolist() == [1, 2, 3, 4] and fixed[0]["length"] == 4
    write_dataset_info(tmp_path, {"tokens_per_window": 4, "codebook_size": 256, "budget": {"mean_tokens": 3}})
    windows = TokenWindows(tmp_path)
    assert len(windows) == 3 and windows.lengths.tolist() == [3, 4, 1]
    assert [windows[i]["tokens"].tolist() for i in range(3)] == [[7, 8, 9, -1], [1, 2, 3, 4], [5, -1, -1, -1]]
    assert [(windows[i]["length"], windows[i]["label"]) for i in range(3)] == [(3, 2), (4, 2), (1, -1)]
    assert windows[-1]["length"] == 1
    # condition ids stored full length (N per window) beside variable-length tokens
    write_shard(tmp_path / "shard-00000.parquet",
                [{"video": "a", "tokens": [7, 8, 9, 1], "window_lengths": [3, 1], "cond_tokens": list(range(8))}], 256)
    windows = TokenWindows(tmp_path)
    assert windows[1]["tokens"].tolist() == [1, -1, -1, -1] and windows[1]["cond"].tolist() == [4, 5, 6, 7]
    write_shard(tmp_path / "shard-00000.parquet", [{"video": "a", "tokens": [1] * 5, "window_lengths": [5]}], 256)
    with pytest.raises(ValueError, match=r"window lengths up to 5; expected at most tokens_per_window \(4\)"):
        TokenWindows(tmp_path)


def test_an_adaptive_dataset_stores_valid_ids_only(tmp_path, videos, nested_tokenizer):
    from larp.budget import candidate_lengths, choose_lengths
    from larp.data.windows import VideoWindows

    good = [e for e in videos if "bad" not in e.path][:3]  # 1 + 2 + 1 windows
    out = tmp_path / "target"
    info = write_token_dataset(good, nested_tokenizer, out, window_plan(nested_tokenizer), videos_per_shard=2,
                               batch_size=4, num_workers=0, progress=False, target_psnr=12.0,
                               candidates=candidate_lengths(32, 8))
    assert info["budget"] == {"target_psnr": 12.0, "candidates": [8, 16, 24, 32], "metric": "psnr",
                              "predicted": False, "predictor": None}
    rows = rows_of(out)
    for row, entry in zip(rows, good):
        clips = torch.stack(list(VideoWindows(entry.path, window_plan(nested_tokenizer))))
        choice = choose_lengths(nested_tokenizer, clips, target_psnr=12.0, candidates=[8, 16, 24, 32])
        assert row["window_lengths"] == choice.lengths.tolist()
        assert row["tokens"] == [int(i) for i in choice.ids.flatten() if i >= 0]
    total = sum(sum(row["window_lengths"]) for row in rows)
    assert info["mean_tokens"] == pytest.approx(total / info["num_windows"])
    windows = TokenWindows(out)
    assert windows.lengths.tolist() == [k for row in rows for k in row["window_lengths"]]


def test_a_mean_budget_holds_per_shard_and_a_rerun_with_another_policy_is_refused(tmp_path, videos,
                                                                                    nested_tokenizer):
    from larp.budget import candidate_lengths

    good = [e for e in videos if "bad" not in e.path][:3]
    out = tmp_path / "mean"
    write_token_dataset(good, nested_tokenizer, out, window_plan(nested_tokenizer), videos_per_shard=2,
                        batch_size=4, num_workers=0, progress=False, mean_tokens=10)
    for shard in shard_paths(out):
        lengths = [k for row in pq.read_table(shard).to_pylist() for k in row["window_lengths"]]
        assert sum(lengths) <= 10 * len(lengths) and set(lengths) <= set(candidate_lengths(32))
    with pytest.raises(ValueError, match="other settings"):
        write_token_dataset(good, nested_tokenizer, out, window_plan(nested_tokenizer), videos_per_shard=2,
                            num_workers=0, progress=False, mean_tokens=12)


def test_tokenize_manifest_with_a_mean_budget(tmp_path, videos, nested_tokenizer, capsys):
    good = [e for e in videos if "bad" not in e.path]
    # the CLI: --manifest with --mean-tokens, the mean length printed, the policy in _dataset.json
    manifest = write_manifest(tmp_path / "m.csv", good[:2])
    folder = str(nested_tokenizer.save_pretrained(tmp_path / "nested"))
    assert main(["tokenize", "--manifest", str(manifest), "-o", str(tmp_path / "cli"), "--tokenizer", folder,
                 "--mean-tokens", "8", "--num-workers", "0", "--device", "cpu"]) == 0
    info = read_dataset_info(tmp_path / "cli")
    assert info["budget"]["mean_tokens"] == 8.0 and info["mean_tokens"] <= 8.0
    printed = capsys.readouterr().out
    assert f"adaptive lengths: {info['mean_tokens']:.2f} tokens per window on average (of 32)" in printed
