"""``larp tokenize`` and ``larp reconstruct``, and loading a tokenizer for any command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from larp.cli.arguments import (
    add_device_option,
    add_dtype_option,
    add_set_option,
    nonnegative_int,
    positive_float,
    positive_int,
)
from larp.data.video_io import probe_video, read_video, write_video
from larp.files import write_atomic, write_json_atomic
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast, resolve_precision

logger = logging.getLogger(__name__)

VIDEO_BATCH_SIZE = 8  # clips per forward pass when tokenizing video files


def register(commands: argparse._SubParsersAction) -> None:
    tokenize = commands.add_parser(
        "tokenize",
        help="turn videos into LARP token ids (.npy + .json sidecar), or a dataset into a token cache",
        description="Tokenize video files (one .npy of ids + a .json sidecar each, in -o DIR), or with "
        "--manifest / --config a whole dataset into a token cache for `larp train-generator` (-o DIR is then "
        "the recipe's tokens.cache). The cache's data and token settings are those of a generator recipe: "
        "--set data.val_manifest=... data.random_flip=false tokens.clips_per_video=2 tokens.clip_seed=0, and "
        "condition_frames=5 to also cache the condition tokens of frame prediction; with --config RECIPE they "
        "start from that recipe (and its frame prediction setting). A train-generator run reuses the cache when "
        "its recipe has the same settings.",
    )
    tokenize.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (mp4, avi, webm, mkv, gif, ...)")
    tokenize.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    cache = tokenize.add_argument_group("token cache")
    cache.add_argument("--manifest", metavar="MANIFEST",
                       help="build a token cache of this csv manifest (official format) or folder of videos "
                       "(data.manifest; several joined with +)")
    cache.add_argument("--config", metavar="RECIPE",
                       help="build the token cache of this generator recipe (file or packaged name): its data, "
                       "tokens.* and frame prediction settings, and its tokenizer unless --tokenizer is given")
    add_set_option(cache, "data.*, tokens.* or condition_frames", "data.val_manifest=val.csv tokens.clips_per_video=2")
    tokenize.add_argument("--batch-size", type=positive_int, default=None,
                          help=f"clips per forward pass (default {VIDEO_BATCH_SIZE}; token cache: "
                          "tokens.encode_batch_size)")
    tokenize.add_argument(
        "--stochastic",
        action="store_true",
        help="sample codes (SVQ) instead of taking the nearest code (the released generators use the default)",
    )
    tokenize.add_argument("--seed", type=nonnegative_int, default=0, help="seed for --stochastic (default 0)")
    _add_clip_args(tokenize)
    _add_model_args(tokenize, required=False)
    tokenize.set_defaults(run=run_tokenize)

    reconstruct = commands.add_parser("reconstruct", help="tokenize a video, decode it back, report PSNR")
    reconstruct.add_argument("video", help="video file")
    reconstruct.add_argument("-o", "--output", required=True, metavar="FILE", help="output video (.mp4 or .gif)")
    reconstruct.add_argument("--fps", type=positive_float, default=None,
                             help="output frame rate (default: the input's divided by --stride)")
    reconstruct.add_argument(
        "--side-by-side", action="store_true", help="write the input clip and the reconstruction next to each other"
    )
    _add_clip_args(reconstruct)
    _add_model_args(reconstruct, required=True)
    reconstruct.set_defaults(run=run_reconstruct)


def _add_model_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--tokenizer", required=required, help="tokenizer folder or HuggingFace repo id")
    add_device_option(parser)
    add_dtype_option(parser)


def _add_clip_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=nonnegative_int, default=0, help="first frame of the clip (default 0)")
    parser.add_argument("--stride", type=positive_int, default=1,
                        help="take every N-th frame (default 1: native frame rate)")
    parser.add_argument("--frames", type=positive_int, default=None,
                        help="frames per clip (default: the tokenizer's, e.g. 16)")
    parser.add_argument(
        "--pad", action="store_true", help="repeat the last frame of a video shorter than the clip instead of failing"
    )


def load_tokenizer(spec: str, device: str | None, dtype: str) -> LARPTokenizer:
    """The tokenizer ``spec`` (folder or repo id) on ``device`` (default: CUDA when available), fp32 weights.

    ``dtype`` is a :data:`larp.precision.PRECISIONS` name, checked here (before loading) so that fp16 on a
    CPU fails at once; the caller runs the model under ``larp.precision.autocast(dtype, tokenizer.device)``.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but CUDA is not available on this machine")
    try:
        resolved = resolve_precision(dtype, device)
    except ValueError as error:
        raise ValueError(f"--dtype {dtype}: {error}") from None
    tokenizer = LARPTokenizer.from_pretrained(spec, device=device)
    config = tokenizer.config
    logger.info(
        "tokenizer %s: %d tokens per %d-frame %dx%d clip, codebook %d, on %s (%s)",
        spec, config.num_tokens, config.frame_num, config.input_size, config.input_size,
        config.quantizer.codebook_size, device, resolved,
    )
    return tokenizer


def _read_clip(path: str, tokenizer: LARPTokenizer, args: argparse.Namespace) -> torch.Tensor:
    """(3, t, s, s) clip resized and cropped to the tokenizer's input size."""
    frames = tokenizer.config.frame_num if args.frames is None else args.frames
    tokenizer.check_num_frames(frames)
    return read_video(
        path, start=args.start, num_frames=frames, stride=args.stride, size=tokenizer.config.input_size, pad=args.pad
    )


# ------------------------------------------------------------------------------------------ tokenize
def run_tokenize(args: argparse.Namespace) -> int:
    cache_mode = bool(args.manifest or args.config)
    overrides = [video for video in args.videos if "=" in video and not Path(video).exists()]
    if overrides:
        raise ValueError(f"overrides are given with --set: --set {' '.join(overrides)}")
    if bool(args.videos) == cache_mode:
        raise ValueError("give either video files or --manifest / --config (to build a token cache), "
                         "not both or neither")
    if cache_mode:
        return _tokenize_dataset(args)
    if args.settings:
        raise ValueError("--set applies to a token cache (--manifest or --config), not to video files")
    if not args.tokenizer:
        raise ValueError("--tokenizer is required: the tokenizer folder or repo id")
    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_names(args.videos)
    batch_size = args.batch_size or VIDEO_BATCH_SIZE
    generator = torch.Generator(tokenizer.device).manual_seed(args.seed) if args.stochastic else None
    # the bar only on a terminal (disable=None), so logs and captured output stay clean
    with tqdm(total=len(args.videos), unit="video", desc="tokenize", disable=True if args.quiet else None) as progress:
        for first in range(0, len(args.videos), batch_size):
            paths = args.videos[first : first + batch_size]
            clips = torch.stack([_read_clip(p, tokenizer, args) for p in paths])
            with autocast(args.dtype, tokenizer.device):
                ids = tokenizer.encode(clips, stochastic=args.stochastic, generator=generator).cpu().numpy()
            for path, name, row in zip(paths, names[first:], ids):
                _write_tokens(out / name, row, path, clips.shape[2], tokenizer, args)
            progress.update(len(paths))
    print(f"wrote {len(args.videos)} token file(s) to {out}")
    return 0


def _tokenize_dataset(args: argparse.Namespace) -> int:
    """A token cache of a dataset, exactly as ``larp train-generator`` builds (and then reuses) it."""
    from larp.training.token_cache import build_token_cache, split_rows

    clip_flags = [flag for flag, given in (("--stochastic", args.stochastic), ("--frames", args.frames is not None),
                                           ("--start", args.start != 0), ("--stride", args.stride != 1),
                                           ("--pad", args.pad)) if given]
    if clip_flags:
        raise ValueError(f"{', '.join(clip_flags)} apply to video files; a token cache takes whole clips of the "
                         f"tokenizer's length, encoded deterministically")
    data, tokens, condition_frames = cache_request(args)
    if not tokens.tokenizer:
        raise ValueError("--tokenizer is required (or a --config recipe with tokens.tokenizer)")
    tokenizer = load_tokenizer(tokens.tokenizer, args.device, tokens.precision)
    folder = build_token_cache(tokenizer, args.out, data=data, tokens=tokens, condition_frames=condition_frames,
                               progress=not args.quiet)
    train, val = split_rows(folder / "train"), split_rows(folder / "val")
    print(f"token cache {folder}: {train} training rows, {val} validation rows")
    return 0


def cache_request(args: argparse.Namespace):
    """(DataConfig, TokenSourceConfig, condition_frames) of ``tokenize --manifest/--config``: a generator
    recipe's (``--config``) or the defaults, then ``--set``, then ``--manifest`` / ``--tokenizer`` / ``-o`` /
    ``--dtype`` / ``--batch-size`` where given."""
    from larp.config import config_from_dict
    from larp.training.recipe import (
        DataConfig,
        GeneratorTrainConfig,
        TokenSourceConfig,
        apply_overrides,
        load_recipe,
        resolve_recipe,
    )

    if args.config:
        settings = list(args.settings)
        if args.tokenizer:  # a recipe needs its tokenizer; --tokenizer may stand in for it
            settings.append(f"tokens.tokenizer={args.tokenizer}")
        recipe = load_recipe(resolve_recipe(args.config), settings, GeneratorTrainConfig)
        data, tokens = recipe.data, recipe.tokens
        condition_frames = recipe.condition_frames if recipe.model.frame_prediction else None
    else:
        tree = apply_overrides({"data": {}, "tokens": {}, "condition_frames": None}, args.settings)
        unknown = sorted(set(tree) - {"data", "tokens", "condition_frames"})
        if unknown:
            raise ValueError(f"--set {', '.join(unknown)}: unknown; a token cache takes data.*, tokens.* and "
                             f"condition_frames (or give a generator recipe with --config)")
        data = config_from_dict(DataConfig, tree["data"] or {}, where="data")
        tokens = config_from_dict(TokenSourceConfig, tree["tokens"] or {}, where="tokens")
        condition_frames = tree["condition_frames"]
        if isinstance(condition_frames, bool) or not isinstance(condition_frames, (int, type(None))):
            raise ValueError(f"--set condition_frames: expected an integer (or null), got {condition_frames!r}")
    if args.manifest:
        data = dataclasses.replace(data, manifest=args.manifest)
    tokens = dataclasses.replace(
        tokens,
        tokenizer=args.tokenizer or tokens.tokenizer,
        cache=args.out,
        precision=tokens.precision if args.dtype == "auto" else args.dtype,
        encode_batch_size=args.batch_size or tokens.encode_batch_size,
    )
    return data, tokens, condition_frames


def _write_tokens(stem: Path, ids: np.ndarray, video: str, frames: int, tokenizer: LARPTokenizer, args) -> None:
    """``stem.npy`` (N,) int64 ids and ``stem.json``, the sidecar that says how they were made."""
    write_atomic(stem.with_name(stem.name + ".npy"), lambda tmp: np.save(tmp, ids))
    sidecar = {
        "video": str(video),
        "model": args.tokenizer,
        "frames": frames,
        "size": tokenizer.config.input_size,
        "start": args.start,
        "stride": args.stride,
        "num_tokens": int(ids.shape[0]),
        "codebook_size": tokenizer.config.quantizer.codebook_size,
        "stochastic": args.stochastic,
        "seed": args.seed if args.stochastic else None,
        "dtype": resolve_precision(args.dtype, tokenizer.device),
    }
    write_json_atomic(stem.with_name(stem.name + ".json"), sidecar)


def _output_names(videos: list[str]) -> list[str]:
    """File stems, made unique by a numeric suffix when two videos share a name."""
    seen: dict[str, int] = {}
    names = []
    for video in videos:
        stem = Path(video).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}-{count}")
    return names


# ------------------------------------------------------------------------------------------ reconstruct
def run_reconstruct(args: argparse.Namespace) -> int:
    from larp.evaluation.image_metrics import psnr

    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    clip = _read_clip(args.video, tokenizer, args)
    with autocast(args.dtype, tokenizer.device):
        ids = tokenizer.encode(clip[None])
        recon = tokenizer.decode(ids, num_frames=clip.shape[1], clamp=True)[0].float().cpu()
    value = psnr(clip[None], recon[None])[0].item()
    fps = args.fps if args.fps is not None else probe_video(args.video).fps / args.stride
    if not fps > 0:  # a container without a frame rate
        raise ValueError(f"cannot tell the frame rate of {args.video}: give --fps")
    write_video(args.output, torch.cat([clip, recon], dim=3) if args.side_by_side else recon, fps=fps)
    print(
        f"PSNR {value:.2f} dB ({clip.shape[1]} frames {clip.shape[2]}x{clip.shape[3]}, "
        f"{ids.shape[1]} tokens) -> {args.output}"
    )
    return 0
