"""The ``larp`` command end to end on generated videos: info, tokenize (whole video files and token caches),
detokenize, reconstruct, recipes by name, and its errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch

from larp.cli.main import main
from larp.data.video_io import probe_video, write_video
from larp.data.windows import VideoWindows
from larp.models.generator import LARPGenerator
from larp.models.tokenizer import LARPTokenizer
from larp.training.token_cache import tokenizer_fingerprint
from larp.video_tokens import window_plan
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
    assert ids.shape == (2, 32) and ids.dtype == np.int64  # 20 frames: two 16-frame windows, 12 frames padded
    sidecar = json.loads((out / "clip one.json").read_text())
    assert sidecar == {
        "video": video_file, "source_fps": 10.0, "source_frames": 20, "source_size": [48, 40], "fps": 10.0,
        "start": 0.0, "frames_per_window": 16, "num_windows": 2, "pad_frames": 12, "resize": "crop",
        "letterbox": None, "size": 32, "stride": None, "end": None, "tokens_per_window": 32, "codebook_size": 256,
        "tokenizer": tokenizer_folder, "tokenizer_fingerprint": tokenizer_fingerprint(tiny_tokenizer),
        "stochastic": False, "seed": None, "dtype": "fp32", "window_lengths": [32, 32], "mean_tokens": 32.0,
        "budget": None,
    }
    assert (out / "clip one-1.npy").is_file()
    # the ids are exactly what the Python API gives for the same windows
    windows = torch.stack(list(VideoWindows(video_file, window_plan(tiny_tokenizer))))
    assert np.array_equal(ids, tiny_tokenizer.encode(windows).numpy())
    assert "wrote 2 token file(s) (4 windows)" in capsys.readouterr().out


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
    windows = re.findall(r"window (\d): PSNR (-?[\d.]+) dB \(frames (\d+)-(\d+), 32 tokens\)", printed)
    assert [(w, lo, hi) for w, _, lo, hi in windows] == [("0", "0", "15"), ("1", "16", "19")], printed
    match = re.search(r"PSNR (-?[\d.]+) dB over 20 frames \(2 window\(s\) of 16 frames 32x32, 32 tokens each, "
                      r"12 padded\)", printed)
    assert match, printed
    # the whole-video figure is the mean over frames: 16 frames of window 0, 4 of window 1
    per_window = [float(value) for _, value, _, _ in windows]
    assert float(match.group(1)) == pytest.approx((16 * per_window[0] + 4 * per_window[1]) / 20, abs=0.02)
    info = probe_video(out)
    assert info.num_frames == 20 and (info.width, info.height) == (64, 32) and info.fps == pytest.approx(10)


def test_reconstruct_with_stride_max_windows_and_gif(tmp_path, tokenizer_folder, video_file, capsys):
    out = tmp_path / "recon.gif"
    args = ["reconstruct", video_file, "--tokenizer", tokenizer_folder, "-o", str(out), "--stride", "2"]
    assert main(args) == 0
    assert probe_video(out).num_frames == 10
    assert "over 10 frames (1 window(s) of 16 frames 32x32, 32 tokens each, 6 padded)" in capsys.readouterr().out
    args = ["reconstruct", video_file, "--tokenizer", tokenizer_folder, "-o", str(out), "--max-windows", "1",
            "--resize", "pad"]
    assert main(args) == 0
    info = probe_video(out)
    assert info.num_frames == 16 and (info.width, info.height) == (32, 27)  # 48x40 letterboxed: 32x27 kept


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
    assert f"token files {out}: 1 video(s)" in printed and "tokens: 32 per window, codebook 256" in printed
    assert "windows: 2 in all, of 16 frames of 32x32" in printed


# the recipe token-cache tests (tokenize --config) are in tests/test_token_cache_format.py


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


def test_a_short_video_is_one_padded_window(tmp_path, tokenizer_folder):
    short = tmp_path / "short.mp4"
    write_video(short, moving_square(frames=10), fps=10)
    assert main(["tokenize", str(short), "--tokenizer", tokenizer_folder, "-o", str(tmp_path / "t")]) == 0
    assert np.load(tmp_path / "t" / "short.npy").shape == (1, 32)
    assert json.loads((tmp_path / "t" / "short.json").read_text())["pad_frames"] == 6


def test_tokenize_then_detokenize_gives_the_source_length_and_rate(tmp_path, tokenizer_folder, capsys):
    """The Done-when check at small scale: 40 frames at 25 fps with a 16-frame tokenizer."""
    video = tmp_path / "talk.mp4"
    write_video(video, moving_square(frames=40, height=48, width=64), fps=25)
    out = tmp_path / "tokens"
    assert main(["-q", "tokenize", str(video), "--tokenizer", tokenizer_folder, "-o", str(out)]) == 0
    assert np.load(out / "talk.npy").shape == (3, 32)
    sidecar = json.loads((out / "talk.json").read_text())
    assert (sidecar["num_windows"], sidecar["pad_frames"], sidecar["fps"]) == (3, 8, 25.0)
    back = tmp_path / "back.mp4"
    assert main(["-q", "detokenize", str(out / "talk.npy"), "-o", str(back)]) == 0  # the sidecar's tokenizer
    assert "40 frames 32x32 at 25 fps from 3 windows" in capsys.readouterr().out
    info = probe_video(back)
    assert (info.num_frames, info.fps, info.width, info.height) == (40, 25.0, 32, 32)
    assert main(["-q", "detokenize", str(out / "talk.npy"), "-o", str(back), "--size", "64x48",
                 "--tokenizer", tokenizer_folder]) == 0
    info = probe_video(back)
    assert (info.num_frames, info.width, info.height) == (40, 64, 48)
    # --fps resamples by timestamp: 1.6 s at 8 fps = 13 frames, one window
    assert main(["-q", "tokenize", str(video), "--tokenizer", tokenizer_folder, "-o", str(out), "--fps", "8",
                 "--resize", "pad"]) == 0
    sidecar = json.loads((out / "talk.json").read_text())
    assert (sidecar["num_windows"], sidecar["pad_frames"], sidecar["fps"], sidecar["letterbox"]) == (1, 3, 8.0,
                                                                                                   [4, 4, 0, 0])
    assert main(["-q", "detokenize", str(out / "talk.npy"), "-o", str(back)]) == 0
    info = probe_video(back)
    assert (info.num_frames, info.fps, info.width, info.height) == (13, 8.0, 32, 24)


@pytest.mark.parametrize("args, message", [
    (["tokenize", "{video}", "--tokenizer", "{tok}", "-o", "{tmp}/t", "--fps", "8", "--stride", "2"], "not both"),
    (["tokenize", "{video}", "--tokenizer", "{tok}", "-o", "{tmp}/t", "--start", "2", "--end", "1"],
     "--end 1 must be after --start 2"),
    (["detokenize", "{tmp}/none.npy", "-o", "{tmp}/o.mp4"], "none.npy"),
    (["detokenize", "{video}", "-o", "{tmp}/o.mp4"], "expected the .npy"),
])
def test_window_and_detokenize_errors_are_one_line(tmp_path, tokenizer_folder, video_file, capsys, args, message):
    args = [a.format(video=video_file, tok=tokenizer_folder, tmp=tmp_path) for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


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
    for command in ("tokenize", "detokenize", "reconstruct", "info"):
        assert command in result.stdout


@pytest.fixture
def nested_folder(tmp_path):
    import dataclasses

    torch.manual_seed(3)
    config = dataclasses.replace(LARPTokenizer.from_preset("larp-tiny").config, nested_dropout=True)
    model = perturb_(LARPTokenizer(config), seed=3).eval()
    return str(model.save_pretrained(tmp_path / "nested"))


def test_tokenize_adaptive_lengths_and_detokenize(tmp_path, nested_folder, capsys):
    path = tmp_path / "long.mp4"
    write_video(path, torch.cat([moving_square(16), torch.full((3, 16, 40, 48), 0.4), moving_square(16)], 1), fps=10)
    out = tmp_path / "tokens"
    assert main(["tokenize", str(path), "--tokenizer", nested_folder, "-o", str(out), "--mean-tokens", "12",
                 "--candidates", "4", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    ids = np.load(out / "long.npy")
    sidecar = json.loads((out / "long.json").read_text())
    lengths = sidecar["window_lengths"]
    assert ids.shape == (3, 32) and len(lengths) == 3 and sum(lengths) <= 36
    assert [int((row >= 0).sum()) for row in ids] == lengths
    assert all((row[k:] == -1).all() for row, k in zip(ids, lengths))
    assert sidecar["budget"] == {"mean_tokens": 12.0, "candidates": list(range(4, 33, 4)), "metric": "psnr",
                                 "predicted": False, "predictor": None}
    assert f"adaptive lengths: {sum(lengths) / 3:.2f} tokens per window on average (of 32)" in printed
    # detokenize decodes each window from its own length (tests/test_video_tokens.py checks the frames)
    video_out = tmp_path / "back.mp4"
    assert main(["detokenize", str(out / "long.npy"), "-o", str(video_out)]) == 0
    assert probe_video(video_out).num_frames == 48


def test_tokenize_to_a_mean_psnr_and_reconstruct_with_adaptive_lengths(tmp_path, nested_folder, capsys):
    from larp.budget import lengths_for_mean_target, measure_quality

    path = tmp_path / "long.mp4"
    write_video(path, torch.cat([moving_square(16), torch.full((3, 16, 40, 48), 0.4), moving_square(16)], 1), fps=10)
    out = tmp_path / "tokens"
    # a mean PSNR over the video's windows: the hull path on the measured curves
    tokenizer = LARPTokenizer.from_pretrained(nested_folder)
    clips = torch.stack(list(VideoWindows(str(path), window_plan(tokenizer))))
    curves = measure_quality(tokenizer, clips, list(range(4, 33, 4)))
    target = float(curves[:, 2].mean())
    assert main(["tokenize", str(path), "--tokenizer", nested_folder, "-o", str(out), "--target-mean-psnr",
                 f"{target}", "--candidates", "4"]) == 0
    sidecar = json.loads((out / "long.json").read_text())
    assert sidecar["budget"]["target_mean_psnr"] == pytest.approx(target)
    assert sidecar["window_lengths"] == lengths_for_mean_target(curves, list(range(4, 33, 4)), target).tolist()
    # reconstruct takes the same options and prints every window's length
    assert main(["reconstruct", str(path), "--tokenizer", nested_folder, "-o", str(tmp_path / "r.mp4"),
                 "--target-psnr", "90", "--candidates", "8,16,32"]) == 0
    printed = capsys.readouterr().out
    assert re.findall(r"\((?:frames \d+-\d+), (\d+) tokens\)", printed) == ["32", "32", "32"]  # 90 dB: none meets it
    assert "32.00 tokens each on average (of 32)" in printed


@pytest.mark.parametrize("extra, message", [
    (["--target-psnr", "20", "--mean-tokens", "8"], "give one of --target-psnr, --target-mse, --target-lpips, "
     "--target-mean-psnr, --mean-tokens, not several (--target-psnr --mean-tokens)"),
    (["--predict", "{tmp}/p"], "--predict needs one of --target-psnr"),
    (["--candidates", "4"], "--candidates needs one of"),
    (["--mean-tokens", "8", "--stochastic"], "--mean-tokens takes the nearest codes: drop --stochastic"),
    (["--mean-tokens", "1", "--tokenizer", "{nested}"], "mean_tokens 1 is below the smallest candidate length 2"),
    (["--target-psnr", "20", "--candidates", "64", "--tokenizer", "{nested}"], "--candidates 64: a step above"),
    (["--target-psnr", "20"], "--target-psnr: this tokenizer was not trained with nested dropout"),
])
def test_adaptive_flag_errors_are_one_line(tmp_path, tokenizer_folder, nested_folder, video_file, capsys, extra,
                                           message):
    args = ["tokenize", video_file, "--tokenizer", tokenizer_folder, "-o", str(tmp_path / "t")]
    args += [a.format(tmp=tmp_path, nested=nested_folder) for a in extra]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "t" / "clip one.npy").exists()


def test_adaptive_flags_are_refused_for_a_token_cache_and_bad_candidates(tmp_path, capsys):
    assert main(["tokenize", "--config", "ar-tiny-cpu", "-o", str(tmp_path / "c"), "--mean-tokens", "8"]) == 1
    assert "apply to video files and --manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokenize", "x.mp4", "-o", str(tmp_path / "c"), "--target-psnr", "20", "--candidates", "8,4"])
    assert "increasing lengths" in capsys.readouterr().err


def test_tokenize_with_a_length_predictor_decodes_nothing(tmp_path, nested_folder, video_file, capsys, monkeypatch):
    length_predictor = pytest.importorskip("larp.models.length_predictor")
    from larp import budget

    torch.manual_seed(4)
    config = length_predictor.LengthPredictorConfig(num_tokens=32, feature_dim=64, candidates=(8, 16, 24, 32))
    predictor = length_predictor.LengthPredictor(config).eval()
    folder = predictor.save_pretrained(tmp_path / "predictor")
    tokenizer = LARPTokenizer.from_pretrained(nested_folder)
    windows = torch.stack(list(VideoWindows(video_file, window_plan(tokenizer))))
    curves = predictor.predict(tokenizer, windows)
    target = float(curves[:, 1].mean())
    monkeypatch.setattr(budget, "decode_prefixes", lambda *a, **k: pytest.fail("decoded with a predictor"))
    out = tmp_path / "t"
    assert main(["tokenize", video_file, "--tokenizer", nested_folder, "-o", str(out), "--predict", str(folder),
                 "--target-psnr", f"{target}"]) == 0
    sidecar = json.loads((out / "clip one.json").read_text())
    assert sidecar["window_lengths"] == budget.lengths_for_target(curves, [8, 16, 24, 32], target).tolist()
    assert sidecar["budget"]["predicted"] is True and sidecar["budget"]["predictor"] == str(folder)
    assert main(["tokenize", video_file, "--tokenizer", nested_folder, "-o", str(out), "--predict", str(folder),
                 "--target-mse", "0.01"]) == 1
    assert "predicts psnr, not mse" in capsys.readouterr().err
