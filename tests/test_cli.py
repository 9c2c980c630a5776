"""The ``larp`` command end to end on generated videos: info, tokenize, reconstruct, and its errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from larp.cli.main import main
from larp.data.video_io import probe_video, read_video, write_video


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


def test_info_on_a_folder_and_a_preset(tokenizer_folder, capsys):
    assert main(["info", tokenizer_folder]) == 0
    printed = capsys.readouterr().out
    assert "parameters:" in printed and '"num_tokens": 32' in printed
    assert main(["info", "larp-l"]) == 0
    assert "parameters: 172,179,984" in capsys.readouterr().out


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
