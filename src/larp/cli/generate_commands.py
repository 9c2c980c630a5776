"""``larp sample``: class-conditional generation or frame prediction, decoded to videos.

Samples are generated, decoded and written one batch (``--batch-size``) at a time, so memory does not
grow with ``--num``; one torch generator seeded by ``--seed`` draws every batch in turn.
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

logger = logging.getLogger(__name__)

MAX_SAMPLES = 100_000  # per command: each sample is two files in one folder
GRID_SAMPLES = 64  # the grid shows the first samples, 8 per row


def register(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser(
        "sample",
        help="generate videos: class-conditional (--class) or frame prediction (--condition VIDEO)",
        description="Generate videos with a LARP generator and the tokenizer whose tokens it models. Writes, in "
        "-o DIR, one video and one .npy of token ids per sample, grid.gif/mp4 (the first 64 samples) and "
        "samples.json (the settings).",
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
        "--condition-frames", type=positive_int, default=5,
        help="frames given to frame prediction; the last is repeated to the clip length (LARP.md D.3)",
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


def run_sample(args: argparse.Namespace) -> int:
    per_condition = args.num
    total = per_condition * (len(args.classes) if args.classes is not None else 1)
    if total > MAX_SAMPLES:
        raise ValueError(f"--num {args.num} asks for {total:,} samples; at most {MAX_SAMPLES:,} per command "
                         f"(run several commands with other --seed and -o for more)")
    generator, tokenizer = load_pair(args)
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
                   top_k=args.top_k, top_p=args.top_p, generator=rng)
    names: list[str] = []
    grid: list[torch.Tensor] = []
    with tqdm(total=total, unit="sample", desc="sample", disable=True if args.quiet else None) as bar:
        for first in range(0, total, args.batch_size):
            batch = range(first, min(first + args.batch_size, total))
            conditions, batch_names = zip(*(condition_and_name(i) for i in batch))
            ids = generator.generate(torch.stack(conditions), **options)
            with autocast(dtype, device):
                videos = tokenizer.decode(ids, clamp=True).float().cpu()
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
    })
    print(f"wrote {total} sample(s) and a grid to {out}")
    return 0
