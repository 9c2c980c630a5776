"""``larp sample``: class-conditional generation or frame prediction, decoded to videos."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from larp.cli.tokenizer_commands import DTYPES, load_tokenizer, precision
from larp.data.video_io import condition_clip, make_grid, read_video, write_video
from larp.models.generator import LARPGenerator, check_matches_tokenizer
from larp.models.tokenizer import LARPTokenizer

logger = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser(
        "sample",
        help="generate videos: class-conditional (--class) or frame prediction (--condition VIDEO)",
    )
    sample.add_argument("--generator", required=True, help="generator folder or HuggingFace repo id")
    sample.add_argument("--tokenizer", required=True, help="the tokenizer whose tokens the generator models")
    what = sample.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="classes", type=int, nargs="+", metavar="C", help="class ids to sample")
    what.add_argument("--condition", metavar="VIDEO", help="predict the rest of this video from its first frames")
    sample.add_argument("--num", type=int, default=1, help="samples per class (or per condition), default 1")
    sample.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (paper: 1.25)")
    sample.add_argument("--cfg-interval", type=int, default=-1, help="use CFG only for the first N decode steps")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int, default=0, help="0 = off; 1 = greedy")
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=16, help="samples per generation batch")
    sample.add_argument(
        "--condition-frames", type=int, default=5,
        help="frames given to frame prediction; the last is repeated to the clip length (LARP.md D.3)",
    )
    sample.add_argument("--start", type=int, default=0, help="first frame of the conditioning clip")
    sample.add_argument("--fps", type=float, default=8.0, help="frame rate of the written videos")
    sample.add_argument("--format", choices=("gif", "mp4"), default="gif")
    sample.add_argument("-o", "--out", required=True, help="output folder")
    sample.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sample.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="precision (default bf16 on CUDA, as the official sampler; fp32 on CPU)")
    sample.set_defaults(run=run_sample)


def load_pair(args: argparse.Namespace) -> tuple[LARPGenerator, LARPTokenizer, str]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bf16" if torch.device(device).type == "cuda" else "fp32")
    tokenizer = load_tokenizer(args.tokenizer, device, dtype)
    generator = LARPGenerator.from_pretrained(args.generator, device=device)
    check_matches_tokenizer(generator.config, tokenizer.config)
    return generator, tokenizer, dtype


def run_sample(args: argparse.Namespace) -> int:
    if args.num < 1 or args.batch_size < 1:
        raise ValueError("--num and --batch-size must be at least 1")
    generator, tokenizer, dtype = load_pair(args)
    device = tokenizer.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator(device).manual_seed(args.seed)
    options = dict(cfg_scale=args.cfg_scale, cfg_interval=args.cfg_interval, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, generator=rng)

    if args.classes is not None:
        if generator.config.frame_prediction:
            raise ValueError("this is a frame-prediction generator: give --condition VIDEO, not --class")
        bad = [c for c in args.classes if not 0 <= c < generator.config.num_classes]
        if bad:  # the id num_classes is the null class of CFG, not a class to ask for
            raise ValueError(f"class ids must be in [0, {generator.config.num_classes}), got {bad}")
        conditions = torch.tensor([c for c in args.classes for _ in range(args.num)], device=device)
        names = [f"class{c}-{i}" for c in args.classes for i in range(args.num)]
        real = None
    else:
        if not generator.config.frame_prediction:
            raise ValueError("this is a class-conditional generator: give --class C, not --condition")
        real = read_video(args.condition, start=args.start, num_frames=tokenizer.config.frame_num,
                          size=tokenizer.config.input_size)
        with precision(tokenizer, dtype):
            cond_ids = tokenizer.encode(condition_clip(real, args.condition_frames)[None])
        conditions = cond_ids.expand(args.num, -1)
        names = [f"{Path(args.condition).stem}-{i}" for i in range(args.num)]

    ids, videos = [], []
    with tqdm(total=len(names), unit="sample", desc="sample", disable=True if args.quiet else None) as bar:
        for first in range(0, len(names), args.batch_size):
            batch_ids = generator.generate(conditions[first : first + args.batch_size], **options)
            with precision(tokenizer, dtype):
                videos.append(tokenizer.decode(batch_ids, clamp=True).float().cpu())
            ids.append(batch_ids.cpu())
            bar.update(batch_ids.shape[0])
    ids, videos = torch.cat(ids), torch.cat(videos)

    for name, clip, row in zip(names, videos, ids):
        np.save(out / f"{name}.npy", row.numpy())
        # frame prediction: the real clip on the left, the prediction on the right
        write_video(out / f"{name}.{args.format}", clip if real is None else torch.cat([real, clip], dim=3), fps=args.fps)
    write_video(out / f"grid.{args.format}", make_grid(videos, nrow=min(len(names), 8)), fps=args.fps)
    (out / "samples.json").write_text(json.dumps({
        "generator": args.generator, "tokenizer": args.tokenizer, "samples": names,
        "classes": args.classes, "condition": args.condition, "condition_frames": args.condition_frames,
        "cfg_scale": args.cfg_scale, "cfg_interval": args.cfg_interval, "temperature": args.temperature,
        "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "dtype": dtype,
    }, indent=2) + "\n")
    print(f"wrote {len(names)} sample(s) and a grid to {out}")
    return 0
