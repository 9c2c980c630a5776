"""One token format: the generator's token cache is a token dataset, and train-generator trains on token datasets."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import larp
from larp.cli.main import main
from larp.data.synthetic import SyntheticVideos
from larp.data.token_dataset import FORMAT, TokenWindows, read_dataset_info, read_rows, write_dataset_info, write_shard
from larp.data.video_io import write_video
from larp.models.generator import LARPGenerator
from larp.training import token_sources
from larp.training.generator_trainer import train_generator
from larp.training.token_cache import tokenizer_fingerprint
from larp.training.token_sources import build_token_cache, stack_windows
from tests.test_generator_training import recipe_for, save_small_tokenizer


@pytest.fixture
def tokenizer_dir(tmp_path_factory):
    return save_small_tokenizer(tmp_path_factory)


def _build(tokenizer, recipe, folder):
    return build_token_cache(tokenizer, folder, data=recipe.data, tokens=recipe.tokens, condition_frames=None,
                             progress=False)


def test_the_trainers_cache_is_a_token_dataset(tmp_path, tokenizer_dir):
    recipe = recipe_for(tokenizer_dir, tmp_path)  # 48 synthetic videos, 8 validation clips, flips
    tokenizer = larp.LARPTokenizer.from_pretrained(tokenizer_dir)
    folder = _build(tokenizer, recipe, tmp_path / "cache")
    table = read_rows(folder / "train")
    assert table.num_rows == 96  # one row per clip: 48 clips and their 48 mirror images
    assert {"video", "label", "tokens", "window_lengths", "num_windows", "fps", "start", "pad_frames",
            "flipped"} <= set(table.column_names) and "cond_tokens" not in table.column_names
    assert str(table.schema.field("tokens").type) == "list<element: uint16>"  # codebook 64 fits
    rows = table.to_pylist()
    assert all(r["window_lengths"] == [16] and r["num_windows"] == 1 and r["pad_frames"] == 0 for r in rows)
    assert [r["flipped"] for r in rows[:32]] == [False] * 16 + [True] * 16  # per encoding batch of 16 clips
    assert rows[0]["video"] == "synthetic:0" and rows[16]["video"] == "synthetic:0"
    shards = [str(folder / "train" / name) for name in read_dataset_info(folder / "train")["shards"]]
    assert pq.ParquetDataset(shards).read().num_rows == 96  # plain pyarrow reads the shards
    windows = TokenWindows(folder / "train")
    assert len(windows) == 96 and len(TokenWindows(folder / "val")) == 8
    data = SyntheticVideos(num_videos=48, frames=16, size=32)
    clips = torch.stack([data[i]["video"] for i in range(4)])
    assert torch.equal(stack_windows(windows, range(4))["tokens"], tokenizer.encode(clips))
    assert torch.equal(stack_windows(windows, range(16, 20))["tokens"], tokenizer.encode(clips.flip(-1)))
    info = read_dataset_info(folder / "train")
    assert info["format"] == FORMAT and info["complete"] is True and info["num_windows"] == 96
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer) and info["tokens_per_window"] == 16
    settings = info["settings"]
    assert settings["kind"] == "generator-token-cache" and settings["split"] == "train"
    assert settings["clips_per_video"] == 1 and settings["flip"] is True and settings["condition_frames"] is None
    assert info["shards"] == ["shard-00000.parquet"]

    # the reuse rule: other data settings or another tokenizer are refused, naming what differs
    other = recipe_for(tokenizer_dir, tmp_path, "data.synthetic_seed=1")
    with pytest.raises(ValueError, match=r"data differ\): delete it to rebuild it"):
        _build(tokenizer, other, folder)
    changed = larp.LARPTokenizer.from_pretrained(tokenizer_dir)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="tokenizer_fingerprint differ"):
        _build(changed, recipe, folder)


def test_a_killed_build_resumes_to_the_same_rows_and_an_old_npy_cache_is_rebuilt(
    tmp_path, tokenizer_dir, monkeypatch, caplog
):
    recipe = recipe_for(tokenizer_dir, tmp_path, "tokens.encode_batch_size=8")
    tokenizer = larp.LARPTokenizer.from_pretrained(tokenizer_dir)
    reference = read_rows(_build(tokenizer, recipe, tmp_path / "whole") / "train")

    monkeypatch.setattr(token_sources, "SHARD_CLIPS", 16)  # 3 shards of 16 clips
    calls = {"n": 0}
    real = token_sources.encode_clips

    def dies_in_the_third_shard(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # 2 orientations x 2 batches per shard: the first call of shard 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(token_sources, "encode_clips", dies_in_the_third_shard)
    folder = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _build(tokenizer, recipe, folder)
    assert sorted(p.name for p in (folder / "train").glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert read_dataset_info(folder / "train")["complete"] is False
    with pytest.raises(ValueError, match="is unfinished"):
        token_sources.open_token_dataset(folder / "train", fingerprint="x", tokenizer="t", frame_prediction=False,
                                         condition_frames=5)
    stamp = (folder / "train" / "shard-00000.parquet").stat().st_mtime_ns
    monkeypatch.setattr(token_sources, "encode_clips", real)
    _build(tokenizer, recipe, folder)
    assert (folder / "train" / "shard-00000.parquet").stat().st_mtime_ns == stamp  # kept, not redone
    assert read_rows(folder / "train").equals(reference)
    assert read_dataset_info(folder / "train")["shards"] == [f"shard-0000{i}.parquet" for i in range(3)]

    # a cache in the .npy layout of larp 0.2 and earlier is rebuilt in this format, with a log line
    old = tmp_path / "old"
    (old / "train").mkdir(parents=True)
    (old / "cache.json").write_text(json.dumps({"format": "larp-token-cache", "version": 1}))
    np.save(old / "train" / "00000.tokens.npy", np.zeros((2, 16), np.int16))
    np.save(old / "train" / "00000.labels.npy", np.zeros(2, np.int64))
    (old / "train" / "done.json").write_text('{"rows": 2}')
    with caplog.at_level(logging.WARNING, logger="larp.training.token_sources"):
        _build(tokenizer, recipe, old)
    assert "old .npy layout" in caplog.text and "rebuilding it as a Parquet token dataset" in caplog.text
    assert not (old / "cache.json").exists() and not list(old.glob("train/*.npy"))
    assert read_rows(old / "train").equals(reference)


def _token_dataset(folder, tokenizer, *, videos=12, windows=3, labels=True, fingerprint=None):
    """A token dataset as `larp tokenize --manifest` writes it: one row per video of ``windows`` windows (and a
    last partial one on odd rows), encoded from synthetic clips; label = the synthetic class."""
    data = SyntheticVideos(num_videos=videos * windows, frames=16, size=32, seed=7)
    clips = torch.stack([data[i]["video"] for i in range(videos * windows)])
    ids = tokenizer.encode(clips).numpy().reshape(videos, windows, -1)
    rows = []
    for v in range(videos):
        tokens = ids[v].reshape(-1)
        lengths = [16] * windows
        if v % 2:  # a partial last window is not a training sample
            tokens, lengths = np.concatenate([tokens, ids[v, 0, :5]]), lengths + [5]
        rows.append({"video": f"v{v}.mp4", "label": data.label(v * windows) if labels else None, "tokens": tokens,
                     "window_lengths": lengths, "num_windows": len(lengths), "fps": 25.0, "start": 0.0,
                     "pad_frames": 3, "source_fps": 25.0, "source_frames": 16 * windows - 3, "source_width": 64,
                     "source_height": 48})
    folder.mkdir(parents=True)
    write_shard(folder / "shard-00000.parquet", rows[: videos // 2], 64)
    write_shard(folder / "shard-00001.parquet", rows[videos // 2 :], 64)
    write_dataset_info(folder, {
        "format": FORMAT, "version": 1, "tokenizer": "tiny", "codebook_size": 64, "tokens_per_window": 16,
        "tokenizer_fingerprint": fingerprint or tokenizer_fingerprint(tokenizer), "frames_per_window": 16,
        "fps": None, "stride": None, "resize": "crop", "num_videos": videos, "num_windows": videos * windows,
        "num_failed": 0, "shards": ["shard-00000.parquet", "shard-00001.parquet"], "special_tokens": {},
        "settings": {}})
    return folder, ids


def test_train_generator_on_a_token_dataset_trains_and_resumes_exactly(tmp_path, tokenizer_dir):
    tokenizer = larp.LARPTokenizer.from_pretrained(tokenizer_dir)
    dataset, ids = _token_dataset(tmp_path / "dataset", tokenizer)
    # the recipe's cache and data are not used: the dataset wins
    recipe = recipe_for(tokenizer_dir, tmp_path, f"tokens.dataset={dataset}", "tokens.val_windows=6")
    full = train_generator(recipe, tmp_path / "full", progress=False)
    assert not (tmp_path / "cache").exists()
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_loss"] < lines[0]["loss"] and lines[-1]["step"] == 6

    train_generator(recipe, tmp_path / "cut", progress=False, stop_after=3)
    resumed = train_generator(recipe, tmp_path / "cut", resume=True, progress=False)
    a, b = LARPGenerator.from_pretrained(full).state_dict(), LARPGenerator.from_pretrained(resumed).state_dict()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name

    # the held-out windows: every 6th of the 36 full windows (the partial ones are no samples), not trained on
    train, val, source = token_sources.load_token_rows(recipe, tokenizer)
    assert len(train) == 30 and "held out" in source
    windows = torch.from_numpy(ids.reshape(36, 16)).long()
    assert torch.equal(val["tokens"], windows[::6])
    trained = stack_windows(train)["tokens"]
    assert torch.equal(trained, windows[[i for i in range(36) if i % 6]])
    assert token_sources.held_out_windows(10, 4) == [0, 2, 5, 7]
    other = recipe_for(tokenizer_dir, tmp_path, f"tokens.dataset={dataset}", f"tokens.val_dataset={dataset}")
    train, val, _ = token_sources.load_token_rows(other, tokenizer)
    assert len(train) == 36 and val["tokens"].shape == (36, 16)


def test_a_token_dataset_that_does_not_fit_the_recipe_is_refused(tmp_path, tokenizer_dir):
    tokenizer = larp.LARPTokenizer.from_pretrained(tokenizer_dir)
    dataset, _ = _token_dataset(tmp_path / "dataset", tokenizer, videos=4, windows=2)
    foreign, _ = _token_dataset(tmp_path / "foreign", tokenizer, videos=4, windows=2, fingerprint="0" * 64)
    unlabelled, _ = _token_dataset(tmp_path / "unlabelled", tokenizer, videos=4, windows=2, labels=False)
    cases = [
        (recipe_for(tokenizer_dir, tmp_path, f"tokens.dataset={foreign}"),
         r"tokens.dataset=.*foreign was tokenized by another tokenizer \(tiny, weights fingerprint 000000000000\)"),
        (recipe_for(tokenizer_dir, tmp_path, f"tokens.dataset={dataset}", "steps=2", "sample_every=2",
                    frame_prediction=True), r"has no condition tokens \(column cond_tokens\)"),
        (recipe_for(tokenizer_dir, tmp_path, f"tokens.dataset={unlabelled}"), "4 row\\(s\\) of .* have none"),
        (recipe_for(tokenizer_dir, tmp_path, f"tokens.dataset={dataset}", "tokens.val_windows=8"),
         "has 8 windows: tokens.val_windows=8 would leave none"),
        (recipe_for(tokenizer_dir, tmp_path, f"tokens.dataset={tmp_path / 'nothing'}"), "tokens.dataset=.*nothing"),
    ]
    for recipe, message in cases:
        with pytest.raises(ValueError, match=message):
            train_generator(recipe, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="tokens.val_dataset needs tokens.dataset"):
        recipe_for(tokenizer_dir, tmp_path, f"tokens.val_dataset={dataset}")


@pytest.fixture
def tokenizer_folder(tmp_path, tiny_tokenizer):
    return str(tiny_tokenizer.save_pretrained(tmp_path / "tokenizer", official_format=True))


def _write_recipe(path, tokenizer, **model) -> str:
    recipe = {"model_preset": "ar-tiny", "model": model, "tokens": {"tokenizer": tokenizer, "encode_batch_size": 8},
              "data": {"synthetic_videos": 4, "val_videos": 2, "num_workers": 0}}
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_tokenize_config_builds_a_recipes_cache_and_info_describes_it(tmp_path, tokenizer_folder, capsys):
    recipe = _write_recipe(tmp_path / "fp.yaml", tokenizer_folder, frame_prediction=True)
    cache = tmp_path / "cache"
    assert main(["-q", "tokenize", "--config", recipe, "--set", "condition_frames=4", "-o", str(cache)]) == 0
    assert "8 training rows, 2 validation rows" in capsys.readouterr().out
    train = stack_windows(TokenWindows(cache / "train"))
    assert train["tokens"].shape == (8, 32) and train["cond"].shape == (8, 32)
    settings = read_dataset_info(cache / "train")["settings"]
    fingerprint = settings.pop("tokenizer_fingerprint")
    assert len(fingerprint) == 64
    assert settings == {
        "kind": "generator-token-cache", "cache_version": 2, "split": "train", "tokenizer": tokenizer_folder,
        "num_tokens": 32, "codebook_size": 256, "frames": 16, "size": 32, "clips_per_video": 1, "clip_seed": 0,
        "flip": True, "condition_frames": 4,
        "data": {"random_flip": True, "synthetic_videos": 4, "synthetic_classes": 4, "synthetic_object_size": [12, 16],
                 "synthetic_speed": [0.6, 1.2], "synthetic_background": "black", "synthetic_seed": 0, "val_videos": 2},
    }

    assert main(["info", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert f"token cache {cache} (token dataset per split, cache version 2)" in printed
    assert f"weights fingerprint {fingerprint[:16]}" in printed
    assert "tokens: 32 per row, codebook 256, from clips of 16 frames of 32x32" in printed
    assert "train: 8 rows, 4 class label(s)" in printed and "val: 2 rows" in printed
    assert "kind: frame prediction (each row also holds the tokens of its first 4 frames)" in printed

    # the same request again is a reuse; another one is refused with the settings that differ
    stamp = (cache / "train" / "shard-00000.parquet").stat().st_mtime_ns
    assert main(["-q", "tokenize", "--config", recipe, "--set", "condition_frames=4", "-o", str(cache)]) == 0
    assert (cache / "train" / "shard-00000.parquet").stat().st_mtime_ns == stamp
    assert main(["-q", "tokenize", "--config", recipe, "--set", "tokens.clip_seed=1", "-o", str(cache)]) == 1
    assert "clip_seed, condition_frames differ" in capsys.readouterr().err
    assert main(["-q", "tokenize", "--config", recipe, "--fps", "8", "-o", str(cache)]) == 1
    assert "--fps apply to video files and token datasets" in capsys.readouterr().err


def test_tokenize_config_with_a_manifest_keeps_each_clip_when_videos_are_added(tmp_path, tokenizer_folder, capsys):
    videos = tmp_path / "videos" / "wave"
    videos.mkdir(parents=True)
    noise = torch.rand(3, 3, 24, 32, 32, generator=torch.Generator().manual_seed(5))  # every frame differs
    for i in range(2):
        write_video(videos / f"{i}.mp4", noise[i], fps=8)
    recipe = _write_recipe(tmp_path / "fp.yaml", tokenizer_folder, frame_prediction=True)
    cache = tmp_path / "cache"
    args = ["-q", "tokenize", "--config", recipe, "--manifest", str(tmp_path / "videos"), "-o", str(cache),
            "--set", "tokens.clips_per_video=3", "data.random_flip=false", "--dtype", "fp32",
            "--set", "condition_frames=5", "data.val_videos=1"]
    assert main(args) == 0
    assert "6 training rows, 1 validation rows" in capsys.readouterr().out
    settings = read_dataset_info(cache / "train")["settings"]
    assert settings["clips_per_video"] == 3 and settings["condition_frames"] == 5 and settings["flip"] is False
    assert settings["data"]["manifest"] == str(tmp_path / "videos") and settings["data"]["val_videos"] == 1
    rows = stack_windows(TokenWindows(cache / "train"))
    assert rows["label"].tolist() == [0] * 6 and rows["cond"].shape == (6, 32)
    assert read_rows(cache / "train", ["video"]).column("video").to_pylist()[:2] == [
        str(videos / "0.mp4"), str(videos / "1.mp4")]

    # each clip's random start is derived from (clip_seed, clip, video) alone: one more video leaves the
    # clips of the others as they were
    write_video(videos / "2.mp4", noise[2], fps=8)
    assert main([*args[:7], str(tmp_path / "cache3"), *args[8:]]) == 0
    more = stack_windows(TokenWindows(tmp_path / "cache3" / "train"))["tokens"]
    assert more.shape == (9, 32)
    for clip in range(3):  # rows are clip-major: (clip 0: videos 0, 1[, 2]), (clip 1: ...), ...
        assert torch.equal(more[3 * clip : 3 * clip + 2], rows["tokens"][2 * clip : 2 * clip + 2])
    assert not torch.equal(rows["tokens"][0], rows["tokens"][2])  # video 0, clips 0 and 1: other starts
