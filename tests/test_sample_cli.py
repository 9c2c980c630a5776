"""``larp sample`` end to end with tiny random models: class-conditional and frame prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import larp
from larp.cli.main import main
from larp.data.video_io import probe_video, write_video
from tests.conftest import perturb_


@pytest.fixture
def models(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    classcond = perturb_(larp.LARPGenerator.from_preset("ar-tiny")).save_pretrained(tmp_path / "ar")
    fp = perturb_(larp.LARPGenerator.from_preset("ar-fp-tiny")).save_pretrained(tmp_path / "ar-fp")
    return str(tokenizer), str(classcond), str(fp)


def test_class_conditional_samples_are_written_and_seeded(tmp_path, models, capsys):
    tokenizer, classcond, _ = models
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["sample", "--generator", classcond, "--tokenizer", tokenizer, "--class", "3", "7", "--num", "2",
                "--cfg-scale", "1.5", "--seed", "4", "-o", str(out)]
        assert main(args) == 0
        runs.append(np.stack([np.load(out / f"class{c}-{i}.npy") for c in (3, 7) for i in range(2)]))
    assert runs[0].shape == (4, 32) and np.array_equal(runs[0], runs[1])
    assert probe_video(tmp_path / "a" / "class7-1.gif").num_frames == 16
    assert (tmp_path / "a" / "grid.gif").is_file()
    record = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert record["cfg_scale"] == 1.5 and record["classes"] == [3, 7]
    assert "wrote 4 sample(s)" in capsys.readouterr().out


def test_frame_prediction_writes_the_real_clip_next_to_the_prediction(tmp_path, models):
    tokenizer, _, fp = models
    video = tmp_path / "input.mp4"
    write_video(video, torch.rand(3, 20, 40, 40), fps=8)
    out = tmp_path / "fp"
    assert main(["sample", "--generator", fp, "--tokenizer", tokenizer, "--condition", str(video), "--num", "2",
                 "--format", "mp4", "-o", str(out)]) == 0
    info = probe_video(out / "input-1.mp4")
    assert (info.width, info.height, info.num_frames) == (64, 32, 16)


@pytest.mark.parametrize(
    "which, extra, message",
    [
        ("classcond", ["--class", "10"], "class"),
        ("classcond", ["--condition", "x.mp4"], "class-conditional generator"),
        ("fp", ["--class", "1"], "frame-prediction generator"),
        ("fp", ["--condition", "missing.mp4"], "missing.mp4"),
    ],
)
def test_bad_requests_fail_with_one_line(models, tmp_path, capsys, which, extra, message):
    tokenizer, classcond, fp = models
    generator = classcond if which == "classcond" else fp
    assert main(["sample", "--generator", generator, "--tokenizer", tokenizer, *extra, "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_mismatched_generator_and_tokenizer_are_refused(tmp_path, models, capsys):
    _, classcond, _ = models
    other = larp.LARPTokenizer.from_preset("larp-small").save_pretrained(tmp_path / "other")
    assert main(["sample", "--generator", classcond, "--tokenizer", str(other), "--class", "1", "-o", str(tmp_path / "o")]) == 1
    assert "do not belong together" in capsys.readouterr().err


def test_samples_are_generated_one_batch_at_a_time(tmp_path, models, monkeypatch):
    """Memory is bounded by --batch-size, not --num: conditions are made per batch, the grid keeps a few."""
    from larp.cli import generate_commands

    tokenizer, classcond, _ = models
    batches = []
    generate = larp.LARPGenerator.generate

    def recording(self, cond, **kwargs):
        batches.append(cond.tolist())
        return generate(self, cond, **kwargs)

    monkeypatch.setattr(larp.LARPGenerator, "generate", recording)
    monkeypatch.setattr(generate_commands, "GRID_SAMPLES", 4)
    out = tmp_path / "o"
    assert main(["sample", "--generator", classcond, "--tokenizer", tokenizer, "--class", "2", "5", "--num", "3",
                 "--batch-size", "4", "-o", str(out)]) == 0
    assert batches == [[2, 2, 2, 5], [5, 5]]
    names = json.loads((out / "samples.json").read_text())["samples"]
    assert names == ["class2-0", "class2-1", "class2-2", "class5-0", "class5-1", "class5-2"]
    assert all((out / f"{name}.gif").is_file() and np.load(out / f"{name}.npy").shape == (32,) for name in names)
    grid = probe_video(out / "grid.gif")
    assert (grid.width, grid.height) == (4 * 32 + 5 * 2, 32 + 2 * 2)  # the first 4 samples, padding 2


# ------------------------------------------------------------------------------------------ --windows
def test_a_condition_video_rolled_forward_is_one_video_of_k_windows(tmp_path, models):
    tokenizer, _, fp = models
    video = tmp_path / "input.mp4"
    write_video(video, torch.rand(3, 20, 40, 40), fps=8)
    out = tmp_path / "long"
    assert main(["sample", "--generator", fp, "--tokenizer", tokenizer, "--condition", str(video), "--windows", "3",
                 "--condition-frames", "4", "--format", "mp4", "-o", str(out)]) == 0
    info = probe_video(out / "input-0.mp4")
    assert (info.width, info.height, info.num_frames) == (32, 32, 4 + 3 * (16 - 4))
    assert np.load(out / "input-0.npy").shape == (3, 32)
    record = json.loads((out / "samples.json").read_text())
    assert record["windows"] == 3 and record["frames"] == 40 and record["condition_frames"] == 4
    assert record["condition_frames_included"] is True


def test_a_class_start_rolled_forward_by_a_predictor_is_seeded(tmp_path, models, capsys):
    tokenizer, classcond, fp = models
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["sample", "--generator", classcond, "--tokenizer", tokenizer, "--class", "1", "4",
                     "--predictor", fp, "--windows", "3", "--cfg-scale", "1.5", "--seed", "5", "--format", "mp4",
                     "-o", str(out)]) == 0
        runs.append(np.stack([np.load(out / f"class{c}-0.npy") for c in (1, 4)]))
    assert runs[0].shape == (2, 3, 32) and np.array_equal(runs[0], runs[1])
    assert probe_video(tmp_path / "a" / "class4-0.mp4").num_frames == 5 + 3 * 11
    assert "of 3 window(s), 38 frames each" in capsys.readouterr().out


def test_the_predictor_training_value_is_the_default_condition_frames(tmp_path, models):
    tokenizer, classcond, fp = models
    run = tmp_path / "run"
    larp.LARPGenerator.from_pretrained(fp).save_pretrained(run / "generator", official_format=True)
    (run / "recipe.yaml").write_text("model:\n  frame_prediction: true\ncondition_frames: 7\n")
    out = tmp_path / "o"
    assert main(["sample", "--generator", classcond, "--tokenizer", tokenizer, "--class", "0", "--predictor",
                 str(run / "generator"), "--windows", "2", "-o", str(out)]) == 0
    assert json.loads((out / "samples.json").read_text())["condition_frames"] == 7
    assert probe_video(out / "class0-0.gif").num_frames == 7 + 2 * 9


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--class", "1", "--predictor", "AR", "--windows", "2"], "--predictor AR is a class-conditional generator"),
        (["--class", "1", "--windows", "2"], "needs --predictor"),
        (["--class", "1", "--predictor", "FP"], "give --windows K"),
        (["--condition", "x.mp4", "--predictor", "FP", "--windows", "2"], "the --generator itself is the frame predictor"),
        (["--class", "1", "--predictor", "FP", "--windows", "2", "--condition-frames", "16"],
         "below the clip length 16"),
    ],
)
def test_bad_rollouts_fail_with_one_line(models, tmp_path, capsys, extra, message):
    tokenizer, classcond, fp = models
    extra = [{"AR": classcond, "FP": fp}.get(word, word) for word in extra]
    message = message.replace("AR", classcond)
    assert main(["sample", "--generator", classcond, "--tokenizer", tokenizer, *extra, "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_zero_windows_are_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--generator", "g", "--tokenizer", "t", "--class", "1", "-o", "s", "--windows", "0"])
    assert exit_info.value.code == 2 and "--windows" in capsys.readouterr().err
