"""``larp sample``: class-conditional generation or frame prediction, decoded to videos.

Samples are generated, decoded and written one batch (``--batch-size``) at a time, so memory does not
grow with ``--num``; one torch generator seeded by ``--seed`` draws every batch in turn.

``--windows K`` makes long videos (:mod:`larp.rollout`): frame prediction rolled forward, each next window
predicted from the last ``--condition-frames`` frames made so far; the start is the condition video
(``--condition``) or a class-conditional window (``--class`` with a frame-prediction ``--predictor``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from larp.cli.arguments import (
    add_device_option,
    add_dtype_option,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
)
from larp.cli.tokenizer_commands import load_tokenizer
from larp.data.video_io import condition_clip, make_grid, read_video, write_video
from larp.files import write_atomic, write_json_atomic
from larp.models.generator import LARPGenerator, check_matches_tokenizer
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast, resolve_precision
from larp.rollout import DEFAULT_CONDITION_FRAMES, check_predictor, recorded_condition_frames, roll_forward, rollout_frames
from larp.training.generator_trainer import decode_padded

logger = logging.getLogger(__name__)

MAX_SAMPLES = 100_000  # per command: each sample is two files in one folder
GRID_SAMPLES = 64  # the grid shows the first samples, 8 per row
GRID_ROLLOUTS = 16  # ... and the first rollouts (long videos), kept as uint8 until the end


def register(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser(
        "sample",
        help="generate videos: class-conditional (--class) or frame prediction (--condition VIDEO)",
        description="Generate videos with a LARP generator and the tokenizer whose tokens it models. Writes, in "
        "-o DIR, one video and one .npy of token ids per sample, grid.gif/mp4 (the first 64 samples) and "
        "samples.json (the settings). With --windows K, each sample is one long video rolled forward by frame "
        "prediction: k given frames (k = --condition-frames) followed by K windows of T - k new frames each "
        "(T = the tokenizer's clip length), k + K * (T - k) frames in all, and its .npy holds (K, tokens) ids.",
    )
    sample.add_argument("--generator", required=True, help="generator folder or HuggingFace repo id")
    sample.add_argument("--tokenizer", required=True, help="the tokenizer whose tokens the generator models")
    what = sample.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="classes", type=nonnegative_int, nargs="+", metavar="C",
                      help="class ids to sample")
    what.add_argument("--condition", metavar="VIDEO", help="predict the rest of this video from its first frames")
    sample.add_argument("--num", type=positive_int, default=1, help="samples per class (or per condition), default 1")
    sample.add_argument("--cfg-scale", type=nonnegative_float, default=1.0,
                        help="classifier-free guidance scale (1 = off; paper: 1.25)")
    sample.add_argument("--cfg-interval", type=_cfg_interval, default=-1,
                        help="use CFG only for the first N decode steps (-1, the default: all)")
    sample.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0 = greedy (default 1)")
    sample.add_argument("--top-k", type=nonnegative_int, default=0, help="0 = off; 1 = greedy")
    sample.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling, in (0, 1]; 1 = off")
    sample.add_argument("--seed", type=nonnegative_int, default=0)
    sample.add_argument("--batch-size", type=positive_int, default=16,
                        help="samples generated and decoded at a time (default 16)")
    sample.add_argument(
        "--condition-frames", type=positive_int, default=None,
        help="frames given to frame prediction; the last is repeated to the clip length (LARP.md D.3). Default: "
             "the value the frame predictor was trained with when its run folder records it, else "
             f"{DEFAULT_CONDITION_FRAMES}",
    )
    sample.add_argument(
        "--windows", type=positive_int, default=None, metavar="K",
        help="make one long video of K windows per sample, each next window predicted from the last "
             "--condition-frames frames made so far. The video starts with the k condition frames: the real ones "
             "of --condition VIDEO (included in the output), or the first k of the class-conditional window "
             "(--class, which needs --predictor for K > 1); then T - k new frames per window",
    )
    sample.add_argument(
        "--predictor", metavar="FP_GENERATOR",
        help="with --class and --windows: the frame-prediction generator that rolls the class-conditional first "
             "window forward",
    )
    sample.add_argument(
        "--compile", action="store_true",
        help="compile the decode step (torch.compile, fullgraph; CUDA graphs on CUDA): the same ids as without, "
             "faster for long runs, after a compilation of seconds to minutes per batch size (with --windows: "
             "the class-conditional first window only)",
    )
    sample.add_argument("--start", type=nonnegative_int, default=0, help="first frame of the conditioning clip")
    sample.add_argument("--fps", type=positive_float, default=8.0, help="frame rate of the written videos (default 8)")
    sample.add_argument("--format", choices=("gif", "mp4"), default="gif")
    sample.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    add_device_option(sample)
    add_dtype_option(sample, "tokenizer precision (the generator samples in fp32)")
    sample.set_defaults(run=run_sample)


def _cfg_interval(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"expected an integer >= -1 (-1: every step), got {text!r}")
    return value


def load_pair(args: argparse.Namespace) -> tuple[LARPGenerator, LARPTokenizer]:
    """The generator and the tokenizer of ``args``, on one device, checked to belong together."""
    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    generator = LARPGenerator.from_pretrained(args.generator, device=tokenizer.device)
    check_matches_tokenizer(generator.config, tokenizer.config)
    return generator, tokenizer


def _check_rollout_options(args: argparse.Namespace) -> None:
    """The --windows / --predictor combinations, checked before any model is loaded."""
    if args.predictor is not None and args.classes is None:
        raise ValueError("--predictor rolls a class-conditional start forward (--class); with --condition VIDEO "
                         "the --generator itself is the frame predictor")
    if args.predictor is not None and args.windows is None:
        raise ValueError("--predictor is used by rollouts: give --windows K (the windows of each long video)")
    if args.classes is not None and args.windows is not None and args.windows > 1 and args.predictor is None:
        raise ValueError(f"--windows {args.windows} after a class-conditional window needs --predictor FP_GENERATOR "
                         f"(a frame-prediction generator that rolls it forward)")


def _condition_frames(args: argparse.Namespace, predictor: str | None) -> int:
    """--condition-frames, else the predictor's recorded training value, else the D.3 default."""
    if args.condition_frames is not None:
        return args.condition_frames
    recorded = recorded_condition_frames(predictor) if predictor is not None else None
    return DEFAULT_CONDITION_FRAMES if recorded is None else recorded


def run_sample(args: argparse.Namespace) -> int:
    per_condition = args.num
    total = per_condition * (len(args.classes) if args.classes is not None else 1)
    if total > MAX_SAMPLES:
        raise ValueError(f"--num {args.num} asks for {total:,} samples; at most {MAX_SAMPLES:,} per command "
                         f"(run several commands with other --seed and -o for more)")
    _check_rollout_options(args)
    generator, tokenizer = load_pair(args)
    if args.windows is not None:
        return _run_rollout(args, generator, tokenizer, total)
    args.condition_frames = _condition_frames(args, args.generator if args.condition is not None else None)
    config = generator.config
    device = tokenizer.device
    dtype = resolve_precision(args.dtype, device)

    real = None
    if args.classes is not None:
        if config.frame_prediction:
            raise ValueError("this is a frame-prediction generator: give --condition VIDEO, not --class")
        bad = [c for c in args.classes if not c < config.num_classes]
        if bad:  # the id num_classes is the null class of CFG, not a class to ask for
            raise ValueError(f"class ids must be in [0, {config.num_classes}), got {bad}")
    else:
        if not config.frame_prediction:
            raise ValueError("this is a class-conditional generator: give --class C, not --condition")
        if args.condition_frames > tokenizer.config.frame_num:
            raise ValueError(f"--condition-frames must be at most the clip length {tokenizer.config.frame_num}, "
                             f"got {args.condition_frames}")
        real = read_video(args.condition, start=args.start, num_frames=tokenizer.config.frame_num,
                          size=tokenizer.config.input_size)
        with autocast(dtype, device):
            cond_ids = tokenizer.encode(condition_clip(real, args.condition_frames)[None])

    def condition_and_name(index: int) -> tuple[torch.Tensor, str]:
        """The condition (a class id, or the condition clip's token ids) and file stem of sample ``index``."""
        if args.classes is not None:
            c = args.classes[index // per_condition]
            return torch.tensor(c, device=device), f"class{c}-{index % per_condition}"
        return cond_ids[0], f"{Path(args.condition).stem}-{index}"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator(device).manual_seed(args.seed)
    options = dict(cfg_scale=args.cfg_scale, cfg_interval=args.cfg_interval, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, generator=rng, compile=args.compile)
    names: list[str] = []
    lengths: list[int] = []
    grid: list[torch.Tensor] = []
    with tqdm(total=total, unit="sample", desc="sample", disable=True if args.quiet else None) as bar:
        for first in range(0, total, args.batch_size):
            batch = range(first, min(first + args.batch_size, total))
            conditions, batch_names = zip(*(condition_and_name(i) for i in batch))
            ids, batch_lengths = generator.generate(torch.stack(conditions), return_lengths=True, **options)
            with autocast(dtype, device):  # variable-length windows (-1 past the length): each from its length
                videos = decode_padded(tokenizer, ids).float().cpu()
            lengths += batch_lengths.tolist()
            for name, clip, row in zip(batch_names, videos, ids.cpu().numpy()):
                write_atomic(out / f"{name}.npy", lambda tmp, row=row: np.save(tmp, row))
                # frame prediction: the real clip on the left, the prediction on the right
                write_video(out / f"{name}.{args.format}", clip if real is None else torch.cat([real, clip], dim=3),
                            fps=args.fps)
            names += batch_names
            grid += list(videos[: max(0, GRID_SAMPLES - len(grid))])
            bar.update(len(batch_names))

    write_video(out / f"grid.{args.format}", make_grid(torch.stack(grid), nrow=min(len(grid), 8)), fps=args.fps)
    write_json_atomic(out / "samples.json", {
        "generator": args.generator, "tokenizer": args.tokenizer, "samples": names,
        "classes": args.classes, "condition": args.condition, "condition_frames": args.condition_frames,
        "cfg_scale": args.cfg_scale, "cfg_interval": args.cfg_interval, "temperature": args.temperature,
        "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "dtype": dtype,
        "batch_size": args.batch_size,
        # ids per window (each .npy holds max_seq_len ids, -1 past its length, for an end_of_window generator)
        "window_lengths": lengths, "end_of_window": config.end_of_window,
    })
    print(f"wrote {total} sample(s) and a grid to {out}")
    return 0


def _run_rollout(args: argparse.Namespace, generator: LARPGenerator, tokenizer: LARPTokenizer, total: int) -> int:
    """``--windows K``: one long video per sample, frame prediction rolled forward (:mod:`larp.rollout`)."""
    config, device = generator.config, tokenizer.device
    if config.end_of_window:
        raise ValueError("--windows rolls fixed-length windows forward; this generator makes variable-length "
                         "windows (end_of_window): sample without --windows")
    dtype = resolve_precision(args.dtype, device)
    frames = tokenizer.config.frame_num
    per_condition = args.num
    if args.classes is not None:
        if config.frame_prediction:
            raise ValueError("this is a frame-prediction generator: give --condition VIDEO, not --class (or give "
                             "a class-conditional --generator and this one as --predictor)")
        bad = [c for c in args.classes if not c < config.num_classes]
        if bad:
            raise ValueError(f"class ids must be in [0, {config.num_classes}), got {bad}")
        predictor = None
        if args.predictor is not None:
            predictor = LARPGenerator.from_pretrained(args.predictor, device=device)
            if predictor.config.end_of_window:
                raise ValueError(f"--predictor {args.predictor} makes variable-length windows (end_of_window), which "
                                 f"rollouts do not chain; give a fixed-length frame predictor")
            check_predictor(predictor, tokenizer, name=f"--predictor {args.predictor}")
        k = _condition_frames(args, args.predictor)
    else:
        if not config.frame_prediction:
            raise ValueError("this is a class-conditional generator: give --class C, not --condition")
        predictor = generator
        k = _condition_frames(args, args.generator)
        real = read_video(args.condition, start=args.start, num_frames=frames, size=tokenizer.config.input_size)
    if not k < frames:
        raise ValueError(f"--condition-frames must be below the clip length {frames} to roll forward, got {k}")
    length = rollout_frames(args.windows, frames, k)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator(device).manual_seed(args.seed)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=rng)
    names: list[str] = []
    grid: list[torch.Tensor] = []
    with tqdm(total=total * args.windows, unit="window", desc="rollout", disable=True if args.quiet else None) as bar:
        for first in range(0, total, args.batch_size):
            batch = range(first, min(first + args.batch_size, total))
            if args.classes is not None:
                classes = [args.classes[i // per_condition] for i in batch]
                batch_names = [f"class{c}-{i % per_condition}" for c, i in zip(classes, batch)]
                first_ids = generator.generate(torch.tensor(classes, device=device), cfg_scale=args.cfg_scale,
                                               cfg_interval=args.cfg_interval, compile=args.compile, **sampling)
                start = dict(first_ids=first_ids)
            else:
                batch_names = [f"{Path(args.condition).stem}-{i}" for i in batch]
                start = dict(video=real[None].expand(len(batch), -1, -1, -1, -1))
            ids, parts = [], []
            for window in roll_forward(tokenizer, predictor, args.windows, condition_frames=k, precision=dtype,
                                       **start, **sampling):
                ids.append(window.ids)
                parts.append(window.frames)  # uint8: the batch's videos so far, nothing on the model side
                bar.update(len(batch_names))
            ids, videos = torch.stack(ids, dim=1).numpy(), torch.cat(parts, dim=2)
            del parts
            for name, row, video in zip(batch_names, ids, videos):
                write_atomic(out / f"{name}.npy", lambda tmp, row=row: np.save(tmp, row))
                write_video(out / f"{name}.{args.format}", video.float() / 255, fps=args.fps)
            names += batch_names
            grid += list(videos[: max(0, GRID_ROLLOUTS - len(grid))].clone())

    grid_video = make_grid(torch.stack(grid).float() / 255, nrow=min(len(grid), 8))
    write_video(out / f"grid.{args.format}", grid_video, fps=args.fps)
    write_json_atomic(out / "samples.json", {
        "generator": args.generator, "tokenizer": args.tokenizer, "predictor": args.predictor, "samples": names,
        "classes": args.classes, "condition": args.condition, "condition_frames": k, "windows": args.windows,
        "frames_per_window": frames, "frames": length, "condition_frames_included": True,
        "cfg_scale": args.cfg_scale, "cfg_interval": args.cfg_interval, "temperature": args.temperature,
        "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "dtype": dtype, "batch_size": args.batch_size,
    })
    print(f"wrote {total} video(s) of {args.windows} window(s), {length} frames each, and a grid to {out}")
    return 0
