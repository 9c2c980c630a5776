"""``larp info``, ``larp tokenize`` and ``larp reconstruct``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from larp.config import config_to_dict
from larp.data.video_io import probe_video, read_video, write_video
from larp.models.tokenizer import LARPTokenizer

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def register(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="show a model's configuration and parameter count")
    info.add_argument("model", help="model folder, HuggingFace repo id, or preset name (e.g. larp-l)")
    info.set_defaults(run=run_info)

    tokenize = commands.add_parser(
        "tokenize",
        help="turn videos into LARP token ids (.npy + .json sidecar), or a dataset into a token cache",
        description="Tokenize video files (one .npy of ids + a .json sidecar each), or with --manifest a whole "
        "dataset into a token cache for `larp train-generator` (recipe: tokens.cache = the -o folder, with the same "
        "data.manifest / data.val_manifest / data.random_flip / tokens.clips_per_video / tokens.clip_seed).",
    )
    tokenize.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (mp4, avi, webm, mkv, gif, ...)")
    tokenize.add_argument("-o", "--out", required=True, help="output folder")
    cache = tokenize.add_argument_group("token cache (with --manifest)")
    cache.add_argument("--manifest", help="csv manifest (official format) or folder of videos to cache")
    cache.add_argument("--val-manifest", help="validation videos (default: the first --val-videos of the manifest)")
    cache.add_argument("--root", help="base folder of the manifest's relative paths")
    cache.add_argument("--val-videos", type=int, default=256, help="validation clips kept (default 256)")
    cache.add_argument("--clips-per-video", type=int, default=1, help="random-start clips per video (default 1)")
    cache.add_argument("--clip-seed", type=int, default=0, help="seed of the clips' random starts (default 0)")
    cache.add_argument("--no-flip", action="store_true", help="do not add the mirror image of every clip")
    cache.add_argument("--frame-prediction", action="store_true",
                       help="also cache the condition tokens of every clip (frame-prediction generators)")
    cache.add_argument("--condition-frames", type=int, default=5, help="given frames for --frame-prediction (default 5)")
    tokenize.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default 8)")
    tokenize.add_argument(
        "--stochastic",
        action="store_true",
        help="sample codes (SVQ) instead of taking the nearest code (the released generators use the default)",
    )
    tokenize.add_argument("--seed", type=int, default=0, help="seed for --stochastic (default 0)")
    _add_clip_args(tokenize)
    _add_model_args(tokenize)
    tokenize.set_defaults(run=run_tokenize)

    reconstruct = commands.add_parser("reconstruct", help="tokenize a video, decode it back, report PSNR")
    reconstruct.add_argument("video", help="video file")
    reconstruct.add_argument("-o", "--out", required=True, help="output video (.mp4 or .gif)")
    reconstruct.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's)")
    reconstruct.add_argument(
        "--side-by-side", action="store_true", help="write the input clip and the reconstruction next to each other"
    )
    _add_clip_args(reconstruct)
    _add_model_args(reconstruct)
    reconstruct.set_defaults(run=run_reconstruct)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or HuggingFace repo id")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="inference precision (default fp32)")


def _add_clip_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=int, default=0, help="first frame of the clip (default 0)")
    parser.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1: native frame rate)")
    parser.add_argument(
        "--frames", type=int, default=None, help="frames per clip (default: the tokenizer's, e.g. 16)"
    )
    parser.add_argument(
        "--pad", action="store_true", help="repeat the last frame of a video shorter than the clip instead of failing"
    )


def load_tokenizer(spec: str, device: str | None, dtype: str) -> LARPTokenizer:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but CUDA is not available on this machine")
    if dtype == "fp16" and torch.device(device).type == "cpu":
        logger.warning("fp16 on CPU is slow; bf16 is the fast reduced precision there")
    # fp32 weights; reduced precision comes from autocast (see ``precision``)
    tokenizer = LARPTokenizer.from_pretrained(spec, device=device)
    logger.info(
        "tokenizer %s: %d tokens per %d-frame %dx%d clip, codebook %d, on %s (%s)",
        spec,
        tokenizer.config.num_tokens,
        tokenizer.config.frame_num,
        tokenizer.config.input_size,
        tokenizer.config.input_size,
        tokenizer.config.quantizer.codebook_size,
        device,
        dtype,
    )
    return tokenizer


def precision(tokenizer: LARPTokenizer, dtype: str):
    """Autocast for bf16/fp16 over fp32 weights: norms, softmax and the VQ stay in fp32, which keeps more
    ids equal to fp32 (99.3% vs 98.6% for cast weights on random larp-l, at the same speed on CPU)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=tokenizer.device.type, dtype=DTYPES[dtype])


def _read_clip(path: str, tokenizer: LARPTokenizer, args: argparse.Namespace) -> torch.Tensor:
    """(3, t, s, s) clip resized and cropped to the tokenizer's input size."""
    frames = args.frames or tokenizer.config.frame_num
    tokenizer._check_num_frames(frames)
    return read_video(
        path, start=args.start, num_frames=frames, stride=args.stride, size=tokenizer.config.input_size, pad=args.pad
    )


def run_info(args: argparse.Namespace) -> int:
    if args.model in LARPTokenizer.presets and not Path(args.model).exists():
        model, source = LARPTokenizer.from_preset(args.model), f"preset {args.model} (random weights)"
    else:
        model, source = LARPTokenizer.from_pretrained(args.model), args.model
    config = model.config
    print(f"LARPTokenizer from {source}")
    print(f"parameters: {model.num_parameters():,}")
    print(
        f"clip: {config.frame_num} frames of {config.input_size}x{config.input_size}, "
        f"patches {config.temporal_patch_size}x{config.patch_size}x{config.patch_size} -> {config.num_patches} patch tokens"
    )
    print(f"tokens: {config.num_tokens} per clip, codebook {config.quantizer.codebook_size} x {config.quantizer.code_dim}")
    print("config:")
    print(json.dumps(config_to_dict(config), indent=2))
    return 0


def run_tokenize(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if bool(args.videos) == bool(args.manifest):
        raise ValueError("give either video files or --manifest (to build a token cache), not both or neither")
    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    if args.manifest:
        return _tokenize_manifest(args, tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_names(args.videos)
    generator = torch.Generator(tokenizer.device).manual_seed(args.seed) if args.stochastic else None
    # the bar only on a terminal (disable=None), so logs and captured output stay clean
    with tqdm(total=len(args.videos), unit="video", desc="tokenize", disable=True if args.quiet else None) as progress:
        for first in range(0, len(args.videos), args.batch_size):
            paths = args.videos[first : first + args.batch_size]
            clips = torch.stack([_read_clip(p, tokenizer, args) for p in paths])
            with precision(tokenizer, args.dtype):
                ids = tokenizer.encode(clips, stochastic=args.stochastic, generator=generator).cpu().numpy()
            for path, name, row in zip(paths, names[first:], ids):
                _write_tokens(out / name, row, path, clips.shape[2], tokenizer, args)
            progress.update(len(paths))
    print(f"wrote {len(args.videos)} token file(s) to {out}")
    return 0


def _tokenize_manifest(args: argparse.Namespace, tokenizer: LARPTokenizer) -> int:
    """A token cache of a dataset, exactly as ``larp train-generator`` builds (and then reuses) it."""
    from larp.models.generator import GeneratorConfig
    from larp.training.recipe import DataConfig, GeneratorTrainConfig, TokenSourceConfig
    from larp.training.token_cache import build_token_cache

    config = tokenizer.config
    recipe = GeneratorTrainConfig(
        model=GeneratorConfig(vocab_size=config.quantizer.codebook_size, max_seq_len=config.num_tokens,
                              frame_prediction=args.frame_prediction),
        tokens=TokenSourceConfig(tokenizer=args.tokenizer, cache=args.out, clips_per_video=args.clips_per_video,
                                 clip_seed=args.clip_seed, precision=args.dtype, encode_batch_size=args.batch_size),
        data=DataConfig(manifest=args.manifest, root=args.root, val_manifest=args.val_manifest,
                        random_flip=not args.no_flip, val_videos=args.val_videos),
        condition_frames=args.condition_frames,
    )
    folder = build_token_cache(recipe, tokenizer, args.out, progress=not args.quiet)
    rows = {split: json.loads((folder / split / "done.json").read_text())["rows"] for split in ("train", "val")}
    print(f"token cache {folder}: {rows['train']} training rows, {rows['val']} validation rows")
    return 0


def _write_tokens(stem: Path, ids: np.ndarray, video: str, frames: int, tokenizer: LARPTokenizer, args) -> None:
    """``stem.npy`` (N,) int64 ids and ``stem.json``, the sidecar that says how they were made."""
    np.save(stem.with_name(stem.name + ".npy"), ids)
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
    }
    stem.with_name(stem.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")


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


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """PSNR in dB of one clip in [0, 1]: -10 log10(MSE)."""
    mse = torch.mean((reference.float() - estimate.float()) ** 2).item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def run_reconstruct(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    clip = _read_clip(args.video, tokenizer, args)
    with precision(tokenizer, args.dtype):
        ids = tokenizer.encode(clip[None])
        recon = tokenizer.decode(ids, num_frames=clip.shape[1], clamp=True)[0].float().cpu()
    value = psnr(clip, recon)
    fps = args.fps or probe_video(args.video).fps / args.stride
    write_video(args.out, torch.cat([clip, recon], dim=3) if args.side_by_side else recon, fps=fps)
    print(
        f"PSNR {value:.2f} dB ({clip.shape[1]} frames {clip.shape[2]}x{clip.shape[3]}, "
        f"{ids.shape[1]} tokens) -> {args.out}"
    )
    return 0
