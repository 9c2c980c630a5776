"""``larp tokenize``, ``larp detokenize`` and ``larp reconstruct`` on whole videos, and loading a tokenizer
for any command.

A video is tokenized whole: consecutive windows of the tokenizer's clip length (:mod:`larp.data.windows`),
``DIR/<stem>.npy`` of shape (windows, tokens per window) and ``DIR/<stem>.json``, the sidecar that says how
they were made and is all ``larp detokenize`` needs to give the video back.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from larp.cli.arguments import (
    add_device_option,
    add_dtype_option,
    add_set_option,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from larp.cli.dataset_commands import add_budget_args, add_dataset_args, budget_kwargs
from larp.data.video_io import probe_video, write_video, write_video_pieces
from larp.data.windows import RESIZE_POLICIES, VideoWindows
from larp.files import write_atomic, write_json_atomic
from larp.models.tokenizer import LARPTokenizer
from larp.precision import resolve_precision
from larp.video_tokens import (
    adaptive_ids,
    decode_windows,
    encode_windows,
    iter_decoded,
    strip_padding,
    tokenize_video,
    window_plan,
)

logger = logging.getLogger(__name__)

VIDEO_BATCH_SIZE = 8  # windows per forward pass when tokenizing video files


def register(commands: argparse._SubParsersAction) -> None:
    tokenize = commands.add_parser(
        "tokenize",
        help="turn whole videos into LARP token ids (.npy + .json sidecar), a manifest into a token dataset, "
        "or a recipe's data into its token cache",
        description="Tokenize whole video files: consecutive windows of the tokenizer's clip length, at the "
        "video's frame rate (or --fps / --stride), from --start to --end seconds; each video gives DIR/<stem>.npy "
        "(windows x tokens per window) and DIR/<stem>.json (how they were made; `larp detokenize` reads it). "
        "With --manifest, a folder or csv of videos becomes a token dataset (sharded Parquet) in -o DIR. With "
        "--config RECIPE, the recipe's data become its token cache for `larp train-generator` (-o DIR is then the "
        "recipe's tokens.cache; --set data.* tokens.* condition_frames=... adjust it).",
    )
    tokenize.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (mp4, avi, webm, mkv, gif, ...)")
    tokenize.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    cache = tokenize.add_argument_group("token dataset and token cache")
    cache.add_argument("--manifest", metavar="MANIFEST",
                       help="write a token dataset of this csv manifest (official format) or folder of videos")
    cache.add_argument("--config", metavar="RECIPE",
                       help="build the token cache of this generator recipe (file or packaged name): its data, "
                       "tokens.* and frame prediction settings, and its tokenizer unless --tokenizer is given")
    add_dataset_args(cache)
    add_set_option(cache, "data.*, tokens.* or condition_frames (--config)",
                   "data.val_manifest=val.csv tokens.clips_per_video=2")
    tokenize.add_argument("--batch-size", type=positive_int, default=None,
                          help=f"windows per forward pass (default {VIDEO_BATCH_SIZE}; token cache: "
                          "tokens.encode_batch_size)")
    tokenize.add_argument(
        "--stochastic",
        action="store_true",
        help="sample codes (SVQ) instead of taking the nearest code (the released generators use the default)",
    )
    tokenize.add_argument("--seed", type=nonnegative_int, default=0, help="seed for --stochastic (default 0)")
    add_budget_args(tokenize)
    add_window_args(tokenize)
    _add_model_args(tokenize, required=False)
    tokenize.set_defaults(run=run_tokenize)

    detokenize = commands.add_parser(
        "detokenize", help="decode the token ids of `larp tokenize` back into one video",
        description="Decode every window of DIR/<stem>.npy and write one video at the recorded frame rate, the "
        "padded frames dropped and a letterbox (--resize pad) removed; the sidecar DIR/<stem>.json says how the "
        "ids were made and which tokenizer made them.",
    )
    detokenize.add_argument("tokens", metavar="TOKENS.npy", help="ids written by larp tokenize (the .json beside it)")
    detokenize.add_argument("-o", "--output", required=True, metavar="FILE", help="output video (.mp4 or .gif)")
    detokenize.add_argument("--size", type=frame_size, default=None, metavar="WxH",
                            help="resize the frames to W x H pixels (default: the model's size)")
    detokenize.add_argument("--fps", type=positive_float, default=None,
                            help="output frame rate (default: the recorded one)")
    detokenize.add_argument("--batch-size", type=positive_int, default=VIDEO_BATCH_SIZE,
                            help=f"windows per forward pass (default {VIDEO_BATCH_SIZE})")
    _add_model_args(detokenize, required=False, default="the one recorded in the sidecar")
    detokenize.set_defaults(run=run_detokenize)

    reconstruct = commands.add_parser(
        "reconstruct", help="tokenize a whole video, decode it back, report the PSNR per window and overall")
    reconstruct.add_argument("video", help="video file")
    reconstruct.add_argument("-o", "--output", required=True, metavar="FILE", help="output video (.mp4 or .gif)")
    reconstruct.add_argument(
        "--side-by-side", action="store_true", help="write the input and the reconstruction next to each other"
    )
    reconstruct.add_argument("--batch-size", type=positive_int, default=VIDEO_BATCH_SIZE,
                             help=f"windows per forward pass (default {VIDEO_BATCH_SIZE})")
    add_budget_args(reconstruct, manifest=False)
    add_window_args(reconstruct)
    _add_model_args(reconstruct, required=True)
    reconstruct.set_defaults(run=run_reconstruct)


def _add_model_args(parser: argparse.ArgumentParser, *, required: bool, default: str | None = None) -> None:
    parser.add_argument("--tokenizer", required=required,
                        help="tokenizer folder or HuggingFace repo id" + (f" (default: {default})" if default else ""))
    add_device_option(parser)
    add_dtype_option(parser)


def add_window_args(parser: argparse.ArgumentParser) -> None:
    """How a video is cut into windows (:class:`larp.data.windows.WindowPlan`)."""
    group = parser.add_argument_group("windows")
    group.add_argument("--fps", type=positive_float, default=None,
                       help="resample to this frame rate, frames picked by timestamp (default: the video's own)")
    group.add_argument("--stride", type=positive_int, default=None, help="or keep every N-th frame")
    group.add_argument("--start", type=nonnegative_float, default=0.0, help="start time in seconds (default 0)")
    group.add_argument("--end", type=positive_float, default=None,
                       help="end time in seconds, exclusive (default: the end of the video)")
    group.add_argument("--max-windows", type=positive_int, default=None, help="at most this many windows per video")
    group.add_argument("--resize", choices=RESIZE_POLICIES, default="crop",
                       help="crop: short side to the model size + centre crop (the official policy, default); "
                       "pad: letterbox, the whole frame kept; stretch: both sides to the model size")


def window_kwargs(args: argparse.Namespace) -> dict:
    """The window flags as keyword arguments of :func:`larp.video_tokens.window_plan` / ``tokenize_video``."""
    if args.fps is not None and args.stride is not None:
        raise ValueError("give --fps (resample by timestamp) or --stride (every N-th frame), not both")
    if args.end is not None and args.end <= args.start:
        raise ValueError(f"--end {args.end:g} must be after --start {args.start:g} (seconds)")
    return {"fps": args.fps, "stride": args.stride, "start": args.start, "end": args.end,
            "max_windows": args.max_windows, "resize": args.resize}


def frame_size(text: str) -> tuple[int, int]:
    """An argparse type: ``WxH`` -> (width, height), both >= 1."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x272, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected a positive WIDTHxHEIGHT, got {text!r}")
    return width, height


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


# ------------------------------------------------------------------------------------------ tokenize
def run_tokenize(args: argparse.Namespace) -> int:
    overrides = [video for video in args.videos if "=" in video and not Path(video).exists()]
    if overrides:
        raise ValueError(f"overrides are given with --set: --set {' '.join(overrides)}")
    folder_mode = bool(args.manifest or args.config)
    if bool(args.videos) == folder_mode:
        raise ValueError("give either video files, or --manifest (a token dataset) or --config (a recipe's token "
                         "cache), not both or neither")
    if args.config:  # a recipe's token cache
        if budget_kwargs(args) or args.predict or args.candidates:
            raise ValueError("adaptive lengths (--target-*, --mean-tokens, --predict, --candidates) apply to video "
                             "files and --manifest, not to a recipe's token cache (--config)")
        from larp.cli.cache_commands import run_tokenize_cache

        return run_tokenize_cache(args, load_tokenizer)
    if args.manifest:
        from larp.cli.dataset_commands import run_tokenize_dataset

        return run_tokenize_dataset(args, load_tokenizer)
    if args.settings:
        raise ValueError("--set applies to a recipe's token cache (--config), not to video files")
    if not args.tokenizer:
        raise ValueError("--tokenizer is required: the tokenizer folder or repo id")
    windows = window_kwargs(args)
    budget_kwargs(args)  # flag combinations, before the model is loaded
    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    budget = budget_kwargs(args, tokenizer)
    from larp.training.token_cache import tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(tokenizer.device).manual_seed(args.seed) if args.stochastic else None
    total_windows, total_tokens = 0, 0
    # the bar only on a terminal (disable=None), so logs and captured output stay clean
    with tqdm(total=len(args.videos), unit="video", desc="tokenize", disable=True if args.quiet else None) as progress:
        for path, name in zip(args.videos, _output_names(args.videos)):
            tokens = tokenize_video(path, tokenizer, **windows, batch_size=args.batch_size or VIDEO_BATCH_SIZE,
                                    precision=args.dtype, stochastic=args.stochastic, generator=generator,
                                    fingerprint=fingerprint, **budget)
            sidecar = {
                "video": str(path),
                **tokens.info,
                "tokenizer": args.tokenizer,
                "stochastic": args.stochastic,
                "seed": args.seed if args.stochastic else None,
                "dtype": resolve_precision(args.dtype, tokenizer.device),
            }
            if sidecar.get("budget") and budget.get("predictor") is not None:
                sidecar["budget"]["predictor"] = args.predict
            _write_tokens(out / name, tokens.ids, sidecar)
            total_windows += tokens.ids.shape[0]
            total_tokens += sum(tokens.info["window_lengths"])
            progress.set_postfix(windows=total_windows)
            progress.update(1)
    print(f"wrote {len(args.videos)} token file(s) ({total_windows} windows) to {out}")
    if budget:
        print(f"adaptive lengths: {total_tokens / max(total_windows, 1):.2f} tokens per window on average (of "
              f"{tokenizer.config.num_tokens})")
    return 0


def _write_tokens(stem: Path, ids: np.ndarray, sidecar: dict) -> None:
    """``stem.npy`` (windows, N) int64 ids and ``stem.json``, the sidecar that says how they were made."""
    write_atomic(stem.with_name(stem.name + ".npy"), lambda tmp: np.save(tmp, ids.astype(np.int64)))
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


# ------------------------------------------------------------------------------------------ detokenize
def read_tokens(path: str | Path) -> tuple[np.ndarray, dict]:
    """The ids of ``X.npy`` and the sidecar ``X.json`` beside it (one-line errors naming the file)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: expected the .npy of `larp tokenize` (its .json sidecar beside it)")
    sidecar = path.with_suffix(".json")
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read token ids {path}: {error}") from None
    try:
        info = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise ValueError(f"{sidecar} not found: `larp detokenize` needs the sidecar `larp tokenize` wrote") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the sidecar {sidecar}: {error}") from None
    missing = [k for k in ("num_windows", "frames_per_window", "fps", "pad_frames") if k not in info]
    if missing:
        raise ValueError(f"{sidecar} lacks {', '.join(missing)}: written by an older larp tokenize (one clip per "
                         f"video); tokenize the video again")
    if ids.ndim == 1:
        ids = ids[None]
    return ids, info


def run_detokenize(args: argparse.Namespace) -> int:
    ids, info = read_tokens(args.tokens)
    spec = args.tokenizer or info.get("tokenizer")
    if not spec:
        raise ValueError(f"{args.tokens}: the sidecar names no tokenizer; give --tokenizer")
    tokenizer = load_tokenizer(spec, args.device, args.dtype)
    recorded = info.get("tokenizer_fingerprint")
    if recorded:
        from larp.training.token_cache import tokenizer_fingerprint

        if tokenizer_fingerprint(tokenizer) != recorded:
            logger.warning("tokenizer %s is not the one that made %s (other weights fingerprint): the video will "
                           "not be what was tokenized", spec, args.tokens)
    fps = args.fps or float(info["fps"])
    if not fps > 0:
        raise ValueError(f"{args.tokens}: the recorded frame rate is {info['fps']}; give --fps")
    # decoded and encoded window batch by window batch: an hour of tokens needs the memory of a few windows
    pieces = iter_decoded(ids, info, tokenizer, size=args.size, batch_size=args.batch_size, precision=args.dtype)
    write_video_pieces(args.output, pieces, fps=fps)
    written = probe_video(args.output)
    print(f"{written.num_frames} frames {written.width}x{written.height} at {fps:g} fps from {ids.shape[0]} windows "
          f"-> {args.output}")
    return 0


# ------------------------------------------------------------------------------------------ reconstruct
def frame_psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """(t,) PSNR of each frame of two videos (3, t, h, w)."""
    from larp.evaluation.image_metrics import psnr

    return psnr(reference.transpose(0, 1)[:, :, None], estimate.transpose(0, 1)[:, :, None])


def run_reconstruct(args: argparse.Namespace) -> int:
    windows_args = window_kwargs(args)
    budget_kwargs(args)  # flag combinations, before the model is loaded
    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    budget = budget_kwargs(args, tokenizer)
    windows = VideoWindows(args.video, window_plan(tokenizer, **windows_args))
    frames = windows.plan.frames
    inputs, outputs, batch = [], [], []

    def flush() -> None:
        inputs.append(torch.stack(batch))
        batch.clear()

    for window in windows:
        batch.append(window)
        if len(batch) == args.batch_size:
            flush()
    if batch:
        flush()
    n = tokenizer.config.num_tokens
    if budget:
        from larp.budget import POLICIES, budget_option

        option = budget_option(**{k: budget.pop(k) for k in list(budget) if k in POLICIES.values()})
        ids, lengths, _ = adaptive_ids(tokenizer, inputs, option, batch_size=args.batch_size, precision=args.dtype,
                                       **budget)
        ids, lengths = ids.split(args.batch_size), lengths.tolist()
    else:
        ids = [encode_windows(tokenizer, clips, args.dtype) for clips in inputs]
        lengths = [n] * sum(len(clips) for clips in inputs)
    outputs = [decode_windows(tokenizer, batch_ids, frames, args.dtype) for batch_ids in ids]
    info = windows.info.to_dict()
    # (3, windows * frames, S, S) -> the video's own frames, letterbox removed
    source = strip_padding(torch.cat(inputs).permute(1, 0, 2, 3, 4).flatten(1, 2), info)
    recon = strip_padding(torch.cat(outputs).permute(1, 0, 2, 3, 4).flatten(1, 2), info)
    per_frame = frame_psnr(source, recon)
    tokens_per_window = (f"{sum(lengths) / len(lengths):.2f} tokens each on average (of {n})" if budget_kwargs(args)
                         else f"{n} tokens each")
    for w in range(info["num_windows"]):
        lo, hi = w * frames, min((w + 1) * frames, per_frame.shape[0])
        print(f"window {w}: PSNR {per_frame[lo:hi].mean().item():.2f} dB (frames {lo}-{hi - 1}, {lengths[w]} "
              f"tokens)")
    fps = info["fps"]
    if not fps > 0:  # a container without a frame rate
        raise ValueError(f"cannot tell the frame rate of {args.video}: give --fps")
    write_video(args.output, torch.cat([source, recon], dim=3) if args.side_by_side else recon, fps=fps)
    print(
        f"PSNR {per_frame.mean().item():.2f} dB over {per_frame.shape[0]} frames ({info['num_windows']} window(s) of "
        f"{frames} frames {recon.shape[3]}x{recon.shape[2]}, {tokens_per_window}, "
        f"{info['pad_frames']} padded) -> {args.output}"
    )
    return 0
