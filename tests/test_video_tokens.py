"""larp.tokenize_video / larp.detokenize_video: whole videos to (windows, N) ids and back to the source's
frame count, with the padding dropped and the letterbox removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import larp
from larp.data.video_io import VideoReadError, write_video
from larp.data.windows import VideoWindows
from larp.training.token_cache import tokenizer_fingerprint
from larp.video_tokens import encode_windows, window_plan


def moving_video(path, frames: int, *, fps: float, width: int = 64, height: int = 48) -> str:
    video = torch.linspace(0.1, 0.4, width).expand(3, frames, height, width).clone()
    for t in range(frames):
        x = (2 * t) % (width - 12)
        video[:, t, height // 4 : height // 4 + 12, x : x + 12] = torch.tensor([0.9, 0.6, 0.2])[:, None, None]
    write_video(path, video, fps=fps)
    return str(path)


@pytest.fixture
def video_40(tmp_path):
    """40 frames at 25 fps (1.6 s), 64x48: the 250-frame check at small scale."""
    return moving_video(tmp_path / "clip.mp4", 40, fps=25)


def test_tokenize_video_covers_the_whole_video(video_40, tiny_tokenizer):
    tokens = larp.tokenize_video(video_40, tiny_tokenizer)
    assert tokens.ids.shape == (3, 32) and tokens.ids.dtype == np.int64
    info = tokens.info
    assert (info["num_windows"], info["frames_per_window"], info["pad_frames"]) == (3, 16, 8)
    assert (info["fps"], info["source_fps"], info["source_frames"], info["source_size"]) == (25.0, 25.0, 40, [64, 48])
    assert info["start"] == 0.0 and info["resize"] == "crop" and info["letterbox"] is None
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(tiny_tokenizer)
    assert info["tokens_per_window"] == 32 and info["codebook_size"] == 256 and "tokenizer" in info
    # the ids are the tokenizer's of each window, whatever the batch size
    windows = torch.stack(list(VideoWindows(video_40, window_plan(tiny_tokenizer))))
    assert np.array_equal(tokens.ids, tiny_tokenizer.encode(windows).numpy())
    one_by_one = larp.tokenize_video(video_40, tiny_tokenizer, batch_size=1)
    assert np.array_equal(one_by_one.ids, tokens.ids)


def test_fps_and_max_windows(video_40, tiny_tokenizer):
    resampled = larp.tokenize_video(video_40, tiny_tokenizer, fps=8)  # times 0 .. 1.5 s: 13 frames
    assert resampled.ids.shape == (1, 32)
    assert (resampled.info["fps"], resampled.info["pad_frames"]) == (8.0, 3)
    first = larp.tokenize_video(video_40, tiny_tokenizer, max_windows=2)
    assert first.ids.shape == (2, 32) and first.info["pad_frames"] == 0


def test_detokenize_gives_back_the_source_length(video_40, tiny_tokenizer):
    tokens = larp.tokenize_video(video_40, tiny_tokenizer)
    video = larp.detokenize_video(tokens.ids, tokens.info, tiny_tokenizer)
    assert video.shape == (3, 40, 32, 32) and video.dtype == torch.float32
    assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    # the frames are the decoded windows, the padded tail dropped
    full = tiny_tokenizer.decode(torch.as_tensor(tokens.ids), clamp=True)  # (3 windows, 3, 16, 32, 32)
    assert torch.allclose(video, full.permute(1, 0, 2, 3, 4).flatten(1, 2)[:, :40])
    resized = larp.detokenize_video(tokens.ids, tokens.info, tiny_tokenizer, size=(64, 48), batch_size=2)
    assert resized.shape == (3, 40, 48, 64)


def test_pad_is_removed_on_the_way_back(tmp_path, tiny_tokenizer):
    path = moving_video(tmp_path / "wide.mp4", 17, fps=24, width=200, height=120)
    tokens = larp.tokenize_video(path, tiny_tokenizer, resize="pad")
    assert tokens.info["letterbox"] == [6, 7, 0, 0] and tokens.info["resize"] == "pad"
    video = larp.detokenize_video(tokens.ids, tokens.info, tiny_tokenizer)
    assert video.shape == (3, 17, 19, 32)  # the 32x32 window without its 6 + 7 black rows
    assert larp.detokenize_video(tokens.ids, tokens.info, tiny_tokenizer, size=(200, 120)).shape == (3, 17, 120, 200)
    stretched = larp.tokenize_video(path, tiny_tokenizer, resize="stretch", max_windows=1)
    assert stretched.info["letterbox"] is None
    assert larp.detokenize_video(stretched.ids, stretched.info, tiny_tokenizer).shape == (3, 16, 32, 32)


def test_encode_windows_is_the_tokenizers_encode(tiny_tokenizer, tiny_video):
    ids = encode_windows(tiny_tokenizer, tiny_video, "fp32")
    assert ids.dtype == torch.long and ids.device.type == "cpu"
    assert torch.equal(ids, tiny_tokenizer.encode(tiny_video))


def test_errors(tmp_path, video_40, tiny_tokenizer):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 100)
    with pytest.raises(VideoReadError, match="bad.mp4"):
        larp.tokenize_video(bad, tiny_tokenizer)
    tokens = larp.tokenize_video(video_40, tiny_tokenizer, max_windows=1)
    with pytest.raises(ValueError, match="2 windows but the info says 1"):
        larp.detokenize_video(np.concatenate([tokens.ids, tokens.ids]), tokens.info, tiny_tokenizer)
    with pytest.raises(ValueError, match="batch_size"):
        larp.tokenize_video(video_40, tiny_tokenizer, batch_size=0)


@pytest.fixture
def nested_tokenizer():
    import dataclasses

    from tests.conftest import perturb_

    torch.manual_seed(3)
    config = dataclasses.replace(larp.LARPTokenizer.from_preset("larp-tiny").config, nested_dropout=True)
    return perturb_(larp.LARPTokenizer(config), seed=3).eval()


def test_fixed_length_files_list_their_window_lengths(video_40, tiny_tokenizer):
    tokens = larp.tokenize_video(video_40, tiny_tokenizer)
    assert tokens.info["window_lengths"] == [32, 32, 32] and tokens.info["budget"] is None
    assert tokens.info["mean_tokens"] == 32.0


def test_adaptive_tokenize_pads_with_minus_one_and_detokenize_decodes_each_prefix(video_40, nested_tokenizer):
    from larp.budget import bisect_lengths, candidate_lengths, decode_prefixes, measure_quality

    windows = torch.stack(list(VideoWindows(video_40, window_plan(nested_tokenizer))))  # 3 windows
    candidates = candidate_lengths(32, 8)  # 8, 16, 24, 32
    curves = measure_quality(nested_tokenizer, windows, candidates, precision="fp32")
    target = float(curves[:, 1].median())  # some windows meet it at 16 or less, some do not
    tokens = larp.tokenize_video(video_40, nested_tokenizer, target_psnr=target, candidates=candidates,
                                 batch_size=2, precision="fp32")
    lengths = tokens.info["window_lengths"]
    # the bisection over the measured curves (this random model's curves are not all monotone)
    expected, _ = bisect_lengths(lambda w, k: curves[w, k // 8 - 1], 3, candidates, target)
    assert lengths == expected.tolist() and len(set(lengths)) > 1
    assert tokens.info["budget"] == {"target_psnr": target, "candidates": candidates, "metric": "psnr",
                                     "predicted": False, "predictor": None}
    assert tokens.info["mean_tokens"] == pytest.approx(sum(lengths) / 3)
    full = nested_tokenizer.encode(windows).numpy()
    for row, k, whole in zip(tokens.ids, lengths, full):
        assert np.array_equal(row[:k], whole[:k]) and (row[k:] == -1).all()
    video = larp.detokenize_video(tokens.ids, tokens.info, nested_tokenizer, batch_size=2, precision="fp32")
    decoded = decode_prefixes(nested_tokenizer, torch.as_tensor(tokens.ids), torch.tensor(lengths))
    assert torch.allclose(video, decoded.permute(1, 0, 2, 3, 4).flatten(1, 2)[:, :40], atol=1e-5)
    # a mean budget over all the windows of the call: 3 x 12 = 36 tokens at most
    mean = larp.tokenize_video(video_40, nested_tokenizer, mean_tokens=12, candidates=candidates, batch_size=2)
    assert sum(mean.info["window_lengths"]) <= 36 and mean.info["budget"]["mean_tokens"] == 12.0
    # the info and the ids must agree; a non-nested tokenizer cannot decode prefixes
    with pytest.raises(ValueError, match="differ from the info's window_lengths"):
        larp.detokenize_video(tokens.ids, {**tokens.info, "window_lengths": [32, 32, 32]}, nested_tokenizer)


def test_adaptive_options_are_checked(video_40, tiny_tokenizer, nested_tokenizer):
    with pytest.raises(ValueError, match="not trained with nested dropout"):
        larp.tokenize_video(video_40, tiny_tokenizer, target_psnr=20.0)
    with pytest.raises(ValueError, match="not several"):
        larp.tokenize_video(video_40, nested_tokenizer, target_psnr=20.0, mean_tokens=8)
    with pytest.raises(ValueError, match="stochastic encoding is not supported"):
        larp.tokenize_video(video_40, nested_tokenizer, mean_tokens=8, stochastic=True)
    tokens = larp.tokenize_video(video_40, nested_tokenizer, mean_tokens=8)
    with pytest.raises(ValueError, match="not trained with nested dropout"):
        larp.detokenize_video(tokens.ids, tokens.info, tiny_tokenizer)
