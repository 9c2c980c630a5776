"""The ``larp`` command end to end on generated videos: info, tokenize (files and token caches), reconstruct,
recipes by name, and its errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from larp.cli.main import main
from larp.data.video_io import probe_video, read_video, write_video
from larp.models.generator import LARPGenerator
from larp.models.tokenizer import LARPTokenizer
from larp.training.token_cache import TokenRows
from tests.conftest import perturb_


def moving_square(frames: int = 20, height: int = 40, width: int = 48) -> torch.Tensor:
    """(3, t, h, w) a bright square moving right over a dim gradient."""
    video = torch.linspace(0.1, 0.3, width).expand(3, frames, height, width).clone()
    for t in range(frames):
        x = 4 + t
        video[:, t, 12:24, x : x + 12] = torch.tensor([0.9, 0.6, 0.2])[:, None, None]
    return video


@pytest.fixture
def tokenizer_folder(tmp_path, tiny_tokenizer):
    return str(tiny_tokenizer.save_pretrained(tmp_path / "tokenizer", official_format=True))


@pytest.fixture
def video_file(tmp_path):
    path = tmp_path / "clip one.mp4"
    write_video(path, moving_square(), fps=10)
    return str(path)


def test_tokenize_writes_ids_and_sidecar(tmp_path, tokenizer_folder, video_file, tiny_tokenizer, capsys):
    second = tmp_path / "other" / "clip one.mp4"  # same stem: must not overwrite the first
    second.parent.mkdir()
    write_video(second, moving_square().flip(3), fps=10)
    out = tmp_path / "tokens"
    code = main(["tokenize", video_file, str(second), "--tokenizer", tokenizer_folder, "-o", str(out), "--device", "cpu"])
    assert code == 0
    ids = np.load(out / "clip one.npy")
    assert ids.shape == (32,) and ids.dtype == np.int64
    sidecar = json.loads((out / "clip one.json").read_text())
    assert sidecar["frames"] == 16 and sidecar["size"] == 32 and sidecar["num_tokens"] == 32
    assert sidecar["model"] == tokenizer_folder and sidecar["video"] == video_file
    assert (out / "clip one-1.npy").is_file()
    # the ids are exactly what the Python API gives for the same clip
    clip = read_video(video_file, num_frames=16, size=32)
    assert np.array_equal(ids, tiny_tokenizer.encode(clip[None])[0].numpy())
    assert "wrote 2 token file(s)" in capsys.readouterr().out


def test_tokenize_stochastic_is_seeded(tmp_path, tokenizer_folder, video_file):
    runs = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / name
        args = ["tokenize", video_file, "--tokenizer", tokenizer_folder, "-o", str(out), "--stochastic", "--seed", seed]
        assert main(args) == 0
        runs.append(np.load(out / "clip one.npy"))
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_reconstruct_prints_psnr_and_writes_the_video(tmp_path, tokenizer_folder, video_file, capsys):
    out = tmp_path / "recon.mp4"
    assert main(["reconstruct", video_file, "--tokenizer", tokenizer_folder, "-o", str(out), "--side-by-side"]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"PSNR (-?[\d.]+) dB \(16 frames 32x32, 32 tokens\)", printed)
    assert match, printed
    info = probe_video(out)
    assert info.num_frames == 16 and (info.width, info.height) == (64, 32) and info.fps == pytest.approx(10)


def test_reconstruct_short_clip_with_stride_and_gif(tmp_path, tokenizer_folder, video_file):
    out = tmp_path / "recon.gif"
    args = ["reconstruct", video_file, "--tokenizer", tokenizer_folder, "-o", str(out), "--frames", "8", "--stride", "2"]
    assert main(args) == 0
    assert probe_video(out).num_frames == 8


def test_reconstruct_of_a_perfect_copy_reports_the_100_db_floor(tmp_path, tokenizer_folder, video_file, capsys,
                                                                  monkeypatch):
    """The one PSNR (larp.evaluation.image_metrics): identical clips give 100 dB, not inf."""
    seen = {}
    encode = LARPTokenizer.encode

    def remember(self, video, *args, **kwargs):
        seen["video"] = video
        return encode(self, video, *args, **kwargs)

    monkeypatch.setattr(LARPTokenizer, "encode", remember)
    monkeypatch.setattr(LARPTokenizer, "decode", lambda self, ids, num_frames=None, clamp=False: seen["video"])
    assert main(["reconstruct", video_file, "--tokenizer", tokenizer_folder, "--output", str(tmp_path / "r.gif")]) == 0
    assert "PSNR 100.00 dB" in capsys.readouterr().out


def test_info_on_a_folder_and_a_preset(tokenizer_folder, capsys):
    assert main(["info", tokenizer_folder]) == 0
    printed = capsys.readouterr().out
    assert "(official LARP format)" in printed and "parameters:" in printed and '"num_tokens": 32' in printed
    assert main(["info", "larp-l"]) == 0
    assert "parameters: 172,179,984" in capsys.readouterr().out


@pytest.mark.parametrize("preset, official", [("ar-tiny", False), ("ar-tiny", True), ("ar-fp-tiny", False)])
def test_info_on_a_generator_folder(tmp_path, capsys, preset, official):
    model = perturb_(LARPGenerator.from_preset(preset))
    folder = model.save_pretrained(tmp_path / "g", official_format=official)
    assert main(["info", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"LARPGenerator from {folder} (")
    assert ("official LARP format" in printed) == official
    assert f"parameters: {model.num_parameters():,}\n" in printed
    if preset == "ar-fp-tiny":
        assert "kind: frame prediction" in printed
    else:
        assert "kind: class-conditional: 10 classes + the null class" in printed
    assert "tokenizer: one with num_tokens=32 and quantizer.codebook_size=256" in printed


def test_info_on_a_generator_preset_and_on_weights_that_do_not_fit(tmp_path, capsys):
    assert main(["info", "llama-abs-LP"]) == 0
    printed = capsys.readouterr().out
    assert "preset llama-abs-LP (random weights)" in printed and "101 classes" in printed
    assert "tokens: 1024 per clip from a vocabulary of 8192" in printed
    folder = LARPGenerator.from_preset("ar-tiny").save_pretrained(tmp_path / "g")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 128}))
    assert main(["info", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "does not match the LARPGenerator config" in err and "tok_embeddings.weight" in err


def test_info_on_token_files(tmp_path, tokenizer_folder, video_file, capsys):
    out = tmp_path / "tokens"
    assert main(["tokenize", video_file, "--tokenizer", tokenizer_folder, "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"token files {out}: 1 video(s)" in printed and "tokens: 32 per video, codebook 256" in printed


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
    train = TokenRows(cache / "train").all()
    assert train["tokens"].shape == (8, 32) and train["cond"].shape == (8, 32)
    stored = json.loads((cache / "cache.json").read_text())
    # exactly the keys and values larp 0.1.0 stored, so its caches are reused by this version
    fingerprint = stored.pop("tokenizer_fingerprint")
    assert len(fingerprint) == 64
    assert stored == {
        "format": "larp-token-cache", "version": 1, "tokenizer": tokenizer_folder, "num_tokens": 32,
        "codebook_size": 256, "frames": 16, "size": 32, "clips_per_video": 1, "clip_seed": 0, "flip": True,
        "condition_frames": 4,
        "data": {"random_flip": True, "synthetic_videos": 4, "synthetic_classes": 4, "synthetic_object_size": [12, 16],
                 "synthetic_speed": [0.6, 1.2], "synthetic_background": "black", "synthetic_seed": 0, "val_videos": 2},
    }

    assert main(["info", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert f"token cache {cache} (larp-token-cache version 1)" in printed
    assert f"weights fingerprint {fingerprint[:16]}" in printed
    assert "tokens: 32 per row, codebook 256, from clips of 16 frames of 32x32" in printed
    assert "train: 8 rows, 4 class label(s)" in printed and "val: 2 rows" in printed
    assert "kind: frame prediction (each row also holds the tokens of its first 4 frames)" in printed

    # the same request again is a reuse; another one is refused with the settings that differ
    stamp = (cache / "train" / "00000.tokens.npy").stat().st_mtime_ns
    assert main(["-q", "tokenize", "--config", recipe, "--set", "condition_frames=4", "-o", str(cache)]) == 0
    assert (cache / "train" / "00000.tokens.npy").stat().st_mtime_ns == stamp
    assert main(["-q", "tokenize", "--config", recipe, "--set", "tokens.clip_seed=1", "-o", str(cache)]) == 1
    assert "clip_seed, condition_frames differ" in capsys.readouterr().err


def test_tokenize_manifest_takes_recipe_keys_with_set(tmp_path, tokenizer_folder, capsys):
    videos = tmp_path / "videos" / "wave"
    videos.mkdir(parents=True)
    noise = torch.rand(3, 3, 24, 32, 32, generator=torch.Generator().manual_seed(5))  # every frame differs
    for i in range(2):
        write_video(videos / f"{i}.mp4", noise[i], fps=8)
    cache = tmp_path / "cache"
    args = ["-q", "tokenize", "--manifest", str(tmp_path / "videos"), "--tokenizer", tokenizer_folder,
            "-o", str(cache), "--set", "tokens.clips_per_video=3", "data.random_flip=false", "--dtype", "fp32",
            "--set", "condition_frames=5", "data.val_videos=1"]
    assert main(args) == 0
    assert "6 training rows, 1 validation rows" in capsys.readouterr().out
    stored = json.loads((cache / "cache.json").read_text())
    assert stored["clips_per_video"] == 3 and stored["condition_frames"] == 5 and stored["flip"] is False
    assert stored["data"]["manifest"] == str(tmp_path / "videos") and stored["data"]["val_videos"] == 1
    rows = TokenRows(cache / "train").all()
    assert rows["label"].tolist() == [0] * 6 and rows["cond"].shape == (6, 32)

    # each clip's random start is derived from (clip_seed, clip, video) alone: one more video leaves the
    # clips of the others as they were
    write_video(videos / "2.mp4", noise[2], fps=8)
    assert main([*args[:7], str(tmp_path / "cache3"), *args[8:]]) == 0
    more = TokenRows(tmp_path / "cache3" / "train").all()["tokens"]
    assert more.shape == (9, 32)
    for clip in range(3):  # rows are clip-major: (clip 0: videos 0, 1[, 2]), (clip 1: ...), ...
        assert torch.equal(more[3 * clip : 3 * clip + 2], rows["tokens"][2 * clip : 2 * clip + 2])
    assert not torch.equal(rows["tokens"][0], rows["tokens"][2])  # video 0, clips 0 and 1: other starts


@pytest.mark.parametrize("command, name, trainer", [
    ("train-tokenizer", "tiny-cpu", "larp.training.tokenizer_trainer.train_tokenizer"),
    ("train-generator", "ar-tiny-cpu", "larp.training.generator_trainer.train_generator"),
])
def test_packaged_recipes_by_name_from_any_folder(tmp_path, monkeypatch, capsys, command, name, trainer):
    calls = []

    def fake_train(recipe, run_dir, **kwargs):
        calls.append((recipe, run_dir, kwargs))
        return run_dir / "model"

    monkeypatch.setattr(trainer, fake_train)
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert main([command, "--config", name, "--set", "steps=3", "--device", "cpu", "--set", "seed=7"]) == 0
    (recipe, run_dir, kwargs), = calls
    assert recipe.steps == 3 and recipe.seed == 7 and run_dir == Path("runs") / name and kwargs["device"] == "cpu"
    assert main([command, "--config", "no-such-recipe"]) == 1
    assert "packaged recipes:" in capsys.readouterr().err


def test_corrupt_video_fails_with_one_line(tmp_path, tokenizer_folder, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 definitely not a video" * 50)
    assert main(["tokenize", str(bad), "--tokenizer", tokenizer_folder, "-o", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("larp tokenize: error:") and "broken.mp4" in err


def test_short_video_fails_unless_padded(tmp_path, tokenizer_folder, capsys):
    short = tmp_path / "short.mp4"
    write_video(short, moving_square(frames=10), fps=10)
    assert main(["tokenize", str(short), "--tokenizer", tokenizer_folder, "-o", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert "short.mp4" in err and "10" in err
    assert main(["tokenize", str(short), "--tokenizer", tokenizer_folder, "-o", str(tmp_path / "t"), "--pad"]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "no/such-model-anywhere"], "hub could not provide it"),
        (["tokenize", "x.mp4", "--tokenizer", "./missing-folder", "-o", "t"], "no model folder"),
        (["reconstruct", "x.mp4", "--tokenizer", "./missing-folder", "-o", "r.mp4", "--device", "cuda:0"], "CUDA is not available"),
        (["sample", "--generator", "./missing-folder", "--tokenizer", "./missing-folder", "--class", "1", "-o", "s"],
         "no model folder"),
    ],
)
def test_bad_arguments_fail_with_one_line(args, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_debug_shows_the_traceback(tmp_path, tokenizer_folder):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="broken.mp4"):
        main(["--debug", "tokenize", str(bad), "--tokenizer", tokenizer_folder, "-o", str(tmp_path / "t")])


def test_the_command_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "larp", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("tokenize", "reconstruct", "info"):
        assert command in result.stdout
