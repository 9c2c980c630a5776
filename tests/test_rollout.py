"""larp.rollout: frame prediction rolled forward, window after window, with tiny random models."""

from __future__ import annotations

import pytest
import torch

import larp
from larp.data.video_io import condition_clip
from larp.rollout import recorded_condition_frames, roll_forward, rollout, rollout_frames, window_span
from tests.conftest import perturb_

T, K = 16, 5  # larp-tiny's clip length; the condition frames


@pytest.fixture
def predictor() -> larp.LARPGenerator:
    torch.manual_seed(0)
    return perturb_(larp.LARPGenerator.from_preset("ar-fp-tiny"), scale=0.5).eval()


@pytest.fixture
def first_ids(tiny_tokenizer) -> torch.Tensor:
    return torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))


def test_k_windows_give_the_condition_frames_and_t_minus_k_new_frames_each(tiny_tokenizer, predictor, first_ids):
    ids, video = rollout(tiny_tokenizer, predictor, 3, condition_frames=K, first_ids=first_ids,
                         generator=torch.Generator().manual_seed(0))
    assert ids.shape == (2, 3, 32) and ids.dtype == torch.int64
    assert torch.equal(ids[:, 0], first_ids)
    assert video.dtype == torch.uint8 and video.shape == (2, 3, K + 3 * (T - K), 32, 32)
    assert rollout_frames(3, T, K) == 38 and window_span(2, T, K) == slice(22, 38)
    # the first window is the first ids decoded, whole
    first = tiny_tokenizer.decode(first_ids, clamp=True).mul(255).round().to(torch.uint8)
    assert torch.equal(video[:, :, :T], first)


@pytest.mark.parametrize("k", [K, 11])  # 11: a window adds 5 frames, fewer than k; the condition spans two windows
def test_each_window_is_predicted_from_the_last_frames_of_the_video(tiny_tokenizer, predictor, first_ids, monkeypatch, k):
    """The condition of window i is the D.3 clip of the video's last k frames so far (the uint8 frames written)."""
    conditions = []
    generate = larp.LARPGenerator.generate

    def recording(self, cond, **kwargs):
        conditions.append(cond.clone())
        return generate(self, cond, **kwargs)

    monkeypatch.setattr(larp.LARPGenerator, "generate", recording)
    ids, video = rollout(tiny_tokenizer, predictor, 3, condition_frames=k, first_ids=first_ids,
                         generator=torch.Generator().manual_seed(0))
    assert len(conditions) == 2
    for index, cond in enumerate(conditions, start=1):
        end = window_span(index - 1, T, k).stop
        clip = torch.cat([video[:, :, end - k : end].float() / 255, torch.zeros(2, 3, T - k, 32, 32)], dim=2)
        assert torch.equal(cond, tiny_tokenizer.encode(condition_clip(clip, k)))
    # the new frames of window i are its decoded frames after the k re-predicted condition frames
    decoded = tiny_tokenizer.decode(ids[:, 2], clamp=True).mul(255).round().to(torch.uint8)
    assert torch.equal(video[:, :, window_span(2, T, k)][:, :, k:], decoded[:, :, k:])


def test_a_video_start_keeps_the_real_frames_and_conditions_like_one_prediction(tiny_tokenizer, predictor):
    real = torch.randint(0, 256, (1, 3, T, 32, 32), generator=torch.Generator().manual_seed(1)).float() / 255
    _, video = rollout(tiny_tokenizer, predictor, 2, condition_frames=K, video=real,
                       generator=torch.Generator().manual_seed(0))
    assert video.shape[2] == K + 2 * (T - K)
    assert torch.equal(video[:, :, :K], (real[:, :, :K] * 255).round().to(torch.uint8))
    # window 1 is exactly `larp sample --condition`'s single prediction with the same generator state
    once = predictor.generate(tiny_tokenizer.encode(condition_clip(real, K)), generator=torch.Generator().manual_seed(0))
    single = tiny_tokenizer.decode(once, clamp=True).mul(255).round().to(torch.uint8)
    assert torch.equal(video[:, :, K:T], single[:, :, K:])


def test_rollouts_are_seeded(tiny_tokenizer, predictor, first_ids):
    runs = [rollout(tiny_tokenizer, predictor, 3, condition_frames=K, first_ids=first_ids,
                    generator=torch.Generator().manual_seed(seed))[0] for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0][:, 1:], runs[2][:, 1:])


def test_the_model_side_holds_one_window_whatever_the_length(tiny_tokenizer, predictor, first_ids, monkeypatch):
    """Every model call sees one window (b, N) ids or (b, 3, T, S, S) frames; windows are handed out as they
    come, as uint8, each with only its new frames."""
    shapes = set()
    for name in ("encode", "decode"):
        method = getattr(larp.LARPTokenizer, name)

        def recording(self, x, *args, _method=method, **kwargs):
            shapes.add(tuple(x.shape))
            return _method(self, x, *args, **kwargs)

        monkeypatch.setattr(larp.LARPTokenizer, name, recording)
    stream = roll_forward(tiny_tokenizer, predictor, 12, condition_frames=K, first_ids=first_ids,
                          generator=torch.Generator().manual_seed(0))
    first = next(stream)  # a generator: nothing beyond window 1 is computed yet
    assert first.frames.shape == (2, 3, T, 32, 32) and shapes == {(2, 32)}
    rest = list(stream)
    assert [w.index for w in rest] == list(range(1, 12))
    assert all(w.frames.shape == (2, 3, T - K, 32, 32) and w.frames.dtype == torch.uint8 for w in rest)
    assert shapes == {(2, 32), (2, 3, T, 32, 32)}


def test_bad_rollouts_are_refused(tiny_tokenizer, predictor, first_ids):
    classcond = larp.LARPGenerator.from_preset("ar-tiny")
    with pytest.raises(ValueError, match="class-conditional generator"):
        next(roll_forward(tiny_tokenizer, classcond, 2, condition_frames=K, first_ids=first_ids))
    with pytest.raises(ValueError, match="windows must be an integer >= 1"):
        next(roll_forward(tiny_tokenizer, predictor, 0, condition_frames=K, first_ids=first_ids))
    with pytest.raises(ValueError, match=r"condition_frames must be in \[1, 16\)"):
        next(roll_forward(tiny_tokenizer, predictor, 2, condition_frames=T, first_ids=first_ids))
    with pytest.raises(ValueError, match="exactly one start"):
        next(roll_forward(tiny_tokenizer, predictor, 2, condition_frames=K))
    with pytest.raises(ValueError, match="needs a frame-prediction predictor"):
        next(roll_forward(tiny_tokenizer, None, 2, condition_frames=K, first_ids=first_ids))


def test_the_training_condition_frames_are_read_from_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "generator").mkdir(parents=True)
    (run / "recipe.yaml").write_text("model:\n  frame_prediction: true\ncondition_frames: 3\n")
    assert recorded_condition_frames(run / "generator") == 3
    (run / "recipe.yaml").write_text("model:\n  frame_prediction: false\ncondition_frames: 3\n")
    assert recorded_condition_frames(run / "generator") is None
    assert recorded_condition_frames(tmp_path / "elsewhere") is None
    assert recorded_condition_frames("owner/repo-id") is None


def test_the_rollout_benchmark_quick_mode(tmp_path, monkeypatch, capsys):
    """benchmarks/bench_rollout.py --quick: random tiny models, 3 windows, the JSON it documents."""
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_rollout

    record = bench_rollout.main(["--quick", "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(record))
    assert record["windows"] == 3 and record["condition_frames"] == K and record["new_frames_per_window"] == T - K
    for result in record["results"]:
        assert result["video_frames"] == K + 3 * (T - K) and result["samples"] == 2
        assert len(result["accuracy_per_window"]) == 3 and list(result["accuracy_at"]) == ["1", "2"]
        assert all(a in (0.0, 0.5, 1.0) for a in result["accuracy_per_window"])  # 2 samples
        assert set(result["accuracy_per_class_per_window"]) == {"right", "left"}
    assert [r["start"] for r in record["results"]] == ["class", "video"]
    assert "accuracy per window 1:" in capsys.readouterr().out
