"""Bad command lines fail at once, with one clear line that names the flag: numbers out of range, the
0.1.0 positional overrides, fp16 on a CPU, absurd sample counts, things `larp info` does not know."""

from __future__ import annotations

import pytest
import torch

from larp.cli.main import build_parser, main
from larp.data.video_io import write_video


def _error_line(capsys) -> str:
    """The last stderr line (argparse prints its usage line first), checked to be the only error line."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    "args, flag, expected",
    [
        (["reconstruct", "v.mp4", "--tokenizer", "t", "-o", "r.mp4", "--max-windows", "0"], "--max-windows",
         "integer >= 1"),
        (["reconstruct", "v.mp4", "--tokenizer", "t", "-o", "r.mp4", "--fps", "0"], "--fps", "number > 0"),
        (["reconstruct", "v.mp4", "--tokenizer", "t", "-o", "r.mp4", "--fps", "nan"], "--fps", "finite"),
        (["reconstruct", "v.mp4", "--tokenizer", "t", "-o", "r.mp4", "--stride", "-2"], "--stride", "integer >= 1"),
        (["tokenize", "v.mp4", "--tokenizer", "t", "-o", "d", "--start", "-1"], "--start", "number >= 0"),
        (["tokenize", "v.mp4", "--tokenizer", "t", "-o", "d", "--batch-size", "0"], "--batch-size", "integer >= 1"),
        (["sample", "--generator", "g", "--tokenizer", "t", "--class", "1", "-o", "s", "--cfg-scale", "nan"],
         "--cfg-scale", "finite"),
        (["sample", "--generator", "g", "--tokenizer", "t", "--class", "1", "-o", "s", "--num", "1e9"],
         "--num", "expected an integer"),
        (["sample", "--generator", "g", "--tokenizer", "t", "--class", "1", "-o", "s", "--top-p", "0"],
         "--top-p", "(0, 1]"),
        (["sample", "--generator", "g", "--tokenizer", "t", "--class", "1", "-o", "s", "--cfg-interval", "-2"],
         "--cfg-interval", ">= -1"),
        (["sample", "--generator", "g", "--tokenizer", "t", "--class", "-1", "-o", "s"], "--class", "integer >= 0"),
        (["sample", "--generator", "g", "--tokenizer", "t", "--class", "1", "-o", "s", "--dtype", "fp64"],
         "--dtype", "invalid choice"),
    ],
)
def test_bad_numbers_are_refused_before_anything_runs(args, flag, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert flag in line and expected in line, line


@pytest.mark.parametrize("command", ["train-tokenizer", "train-generator"])
def test_positional_overrides_point_to_set(command, capsys):
    assert main([command, "--config", "tiny-cpu", "steps=3", "--device", "cpu", "optim.lr=0.1"]) == 2
    line = _error_line(capsys)
    assert line == f"larp {command}: error: overrides are given with --set: --set steps=3 optim.lr=0.1"


def test_set_is_repeatable_around_other_options():
    args = build_parser().parse_args(
        ["train-tokenizer", "--config", "tiny-cpu", "--set", "a=1", "b.c=2", "--device", "cpu", "--set", "d=3"]
    )
    assert args.settings == ["a=1", "b.c=2", "d=3"] and args.device == "cpu"


def test_unknown_options_are_still_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "larp-l", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_every_dtype_defaults_to_auto():
    parser = build_parser()
    for args in (["tokenize", "v.mp4", "-o", "d"], ["reconstruct", "v.mp4", "--tokenizer", "t", "-o", "r.mp4"],
                 ["sample", "--generator", "g", "--tokenizer", "t", "--class", "1", "-o", "s"]):
        assert parser.parse_args(args).dtype == "auto", args


def test_fp16_on_a_cpu_is_refused_by_the_one_precision_rule(tmp_path, tiny_tokenizer, capsys):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    video = tmp_path / "v.mp4"
    write_video(video, torch.rand(3, 16, 32, 32), fps=8)
    args = ["reconstruct", str(video), "--tokenizer", str(folder), "-o", str(tmp_path / "r.mp4"),
            "--device", "cpu", "--dtype", "fp16"]
    assert main(args) == 1
    line = _error_line(capsys)
    assert line.startswith("larp reconstruct: error: --dtype fp16:") and "CUDA" in line and "bf16" in line
    assert not (tmp_path / "r.mp4").exists()


def test_sample_count_is_checked_before_loading(capsys):
    # the models do not exist: the count is refused before anything is loaded or allocated
    args = ["sample", "--generator", "nowhere/g", "--tokenizer", "nowhere/t", "--class", "0", "1", "--num",
            "60000", "-o", "s"]
    assert main(args) == 1
    line = _error_line(capsys)
    assert "120,000 samples" in line and "at most 100,000" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["tokenize", "--manifest", "m.csv", "data.val_videos=2", "--tokenizer", "t", "-o", "c"],
         "overrides are given with --set: --set data.val_videos=2"),
        (["tokenize", "v.mp4", "--tokenizer", "t", "-o", "c", "--set", "data.val_videos=2"],
         "--set applies to a recipe's token cache"),
        (["tokenize", "--config", "r.yaml", "--tokenizer", "t", "-o", "c", "--stochastic", "--fps", "8"],
         "--stochastic, --fps apply to video files"),
        (["tokenize", "--manifest", "m.csv", "--tokenizer", "t", "-o", "c", "--set", "steps=3"],
         "--set applies to a recipe's token cache (--config), not to --manifest"),
        (["tokenize", "--manifest", "m.csv", "-o", "c"], "--tokenizer is required"),
        (["info", "no-such-thing"], "no folder, preset or repo id 'no-such-thing': expected a tokenizer"),
    ],
)
def test_misused_commands_fail_with_one_line(args, message, capsys):
    assert main(args) == 1
    line = _error_line(capsys)
    assert line.startswith(f"larp {args[0]}: error:") and message in line, line


def test_info_on_an_unknown_folder_says_what_it_expected(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["info", str(tmp_path)]) == 1
    assert "none of the files larp info knows: expected a tokenizer or generator folder" in _error_line(capsys)
    assert main(["info", str(tmp_path / "notes.txt")]) == 1
    assert "is a file: expected" in _error_line(capsys)
    (tmp_path / "generator").mkdir()  # a training run folder: point to the model inside
    (tmp_path / "generator" / "config.json").write_text("{}")
    assert main(["info", str(tmp_path)]) == 1
    assert f"(it holds generator/: larp info {tmp_path / 'generator'})" in _error_line(capsys)
