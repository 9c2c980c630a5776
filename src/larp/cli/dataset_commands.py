"""``larp tokenize --manifest CSV_OR_FOLDER -o DATASET``: a token dataset (:mod:`larp.data.token_dataset`).

Run plainly it uses one process; under ``torchrun`` each rank writes its own shards (the rows are the same).
A rerun of the same command resumes a killed one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from larp.cli.arguments import nonnegative_int, positive_float, positive_int
from larp.data.datasets import load_entries
from larp.data.token_dataset import FAILED_NAME, write_token_dataset
from larp.models.tokenizer import LARPTokenizer
from larp.training.distributed import cleanup, init_distributed
from larp.video_tokens import window_plan

__all__ = ["DEFAULT_NUM_WORKERS", "DEFAULT_VIDEOS_PER_SHARD", "add_budget_args", "add_dataset_args", "budget_kwargs",
           "candidates_arg", "run_tokenize_dataset"]

DEFAULT_VIDEOS_PER_SHARD = 256
DEFAULT_NUM_WORKERS = 2
DATASET_BATCH_SIZE = 8  # windows per forward pass


def add_dataset_args(group: argparse._ActionsContainer) -> None:
    """The flags of ``larp tokenize --manifest`` (beside the window flags of the command)."""
    group.add_argument("--num-workers", type=nonnegative_int, default=DEFAULT_NUM_WORKERS,
                       help=f"--manifest: decoding processes per rank (default {DEFAULT_NUM_WORKERS}; 0: decode in "
                       "the main process)")
    group.add_argument("--videos-per-shard", type=positive_int, default=DEFAULT_VIDEOS_PER_SHARD,
                       help=f"--manifest: videos per Parquet shard (default {DEFAULT_VIDEOS_PER_SHARD}; fewer for "
                       "long videos, to keep shards a few hundred MB)")
    group.add_argument("--root", default=None, help="--manifest: base folder of the manifest's relative paths")


BUDGET_FLAGS = {"target_psnr": "--target-psnr", "target_mse": "--target-mse", "target_lpips": "--target-lpips",
                "target_mean_psnr": "--target-mean-psnr", "mean_tokens": "--mean-tokens"}


def candidates_arg(text: str) -> str:
    """An argparse type for ``--candidates``: a step (``4``) or a comma list (``8,16,32``) of lengths >= 1."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a step such as 4 or lengths such as 8,16,32, got {text!r}") from None
    if not values or min(values) < 1 or ("," in text and values != sorted(set(values))):
        raise argparse.ArgumentTypeError(f"expected a step >= 1 or increasing lengths >= 1, got {text!r}")
    return text


def add_budget_args(parser: argparse.ArgumentParser, *, manifest: bool = True) -> None:
    """Adaptive token lengths (:mod:`larp.budget`): one target or a mean budget, candidates, a predictor."""
    group = parser.add_argument_group(
        "adaptive lengths (a tokenizer trained with nested dropout)",
        "each window keeps only the first k of its N tokens: the smallest candidate k meeting a quality target "
        "(N when none does), few tokens for a mean PSNR over the windows, or a mean budget shared among the windows "
        "for the best summed PSNR (give one); the .npy keeps (windows, N) with -1 past each window's length, the "
        "sidecar lists window_lengths")
    group.add_argument("--target-psnr", type=positive_float, default=None, metavar="DB",
                       help="each window's smallest length whose decoded PSNR is at least DB")
    group.add_argument("--target-mse", type=positive_float, default=None, metavar="X",
                       help="each window's smallest length whose decoded MSE is at most X")
    group.add_argument("--target-lpips", type=positive_float, default=None, metavar="X",
                       help="each window's smallest length whose decoded LPIPS is at most X (needs the LPIPS weights)")
    group.add_argument("--target-mean-psnr", type=positive_float, default=None, metavar="DB",
                       help="the mean PSNR over the windows of each video" + (" (with --manifest: of each shard)"
                       if manifest else "") + " at least DB, with few tokens: easy windows may exceed it, hard ones "
                       "stay below")
    group.add_argument("--mean-tokens", type=positive_float, default=None, metavar="K",
                       help="K tokens per window on average, shared for the best summed PSNR over all the windows of "
                       "each video" + (" (with --manifest: over each Parquet shard)" if manifest else ""))
    group.add_argument("--candidates", type=candidates_arg, default=None, metavar="STEP|K1,K2,..",
                       help="the lengths to choose from: every STEP tokens, or a comma list (default: every N/16)")
    group.add_argument("--predict", default=None, metavar="DIR",
                       help="a length predictor folder (`larp train-budget`): lengths from predicted quality, no "
                       "decoding; needs a target or --mean-tokens")


def budget_kwargs(args: argparse.Namespace, tokenizer: LARPTokenizer | None = None) -> dict:
    """The adaptive-length flags as keyword arguments of ``tokenize_video`` / ``write_token_dataset`` ({} when
    none is given). With ``tokenizer`` the candidates are resolved and ``--predict`` is loaded onto its device."""
    given = [name for name in BUDGET_FLAGS if getattr(args, name, None) is not None]
    if len(given) > 1:
        raise ValueError(f"give one of {', '.join(BUDGET_FLAGS.values())}, not several "
                         f"({' '.join(BUDGET_FLAGS[name] for name in given)})")
    if not given:
        for flag in ("predict", "candidates"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag} needs one of {', '.join(BUDGET_FLAGS.values())}")
        return {}
    if getattr(args, "stochastic", False):
        raise ValueError(f"{BUDGET_FLAGS[given[0]]} takes the nearest codes: drop --stochastic")
    kwargs = {given[0]: getattr(args, given[0])}
    if tokenizer is None:
        return kwargs
    from larp.budget import candidate_lengths, require_nested_dropout

    try:
        require_nested_dropout(tokenizer)
    except ValueError as error:
        raise ValueError(f"{BUDGET_FLAGS[given[0]]}: {error}") from None
    n = tokenizer.config.num_tokens
    if args.candidates is not None:
        if "," in args.candidates:
            kwargs["candidates"] = [int(v) for v in args.candidates.split(",")]
            if kwargs["candidates"][-1] > n:
                raise ValueError(f"--candidates {args.candidates}: lengths above the tokenizer's {n} tokens")
        else:
            step = int(args.candidates)
            if step > n:
                raise ValueError(f"--candidates {step}: a step above the tokenizer's {n} tokens")
            kwargs["candidates"] = candidate_lengths(n, step)
    if args.predict is not None:
        from larp.models.length_predictor import LengthPredictor

        predictor = LengthPredictor.from_pretrained(args.predict, device=str(tokenizer.device)).eval()
        predictor.source = args.predict
        kwargs["predictor"] = predictor
    return kwargs


def run_tokenize_dataset(args: argparse.Namespace,
                         load_tokenizer: Callable[[str, str | None, str], LARPTokenizer]) -> int:
    """Write the token dataset of ``args.manifest`` to ``args.out``.

    ``load_tokenizer(spec, device, precision)`` is the CLI's loader (``larp.cli.tokenizer_commands``, which
    dispatches here: passed in, so the two modules do not import each other).
    """
    if getattr(args, "stochastic", False):
        raise ValueError("--stochastic applies to video files; a token dataset holds the nearest codes")
    if getattr(args, "settings", None):
        raise ValueError("--set applies to a recipe's token cache (--config), not to --manifest")
    if not args.tokenizer:
        raise ValueError("--tokenizer is required: the tokenizer folder or repo id")
    budget_kwargs(args)  # flag combinations, before anything is loaded
    if args.fps is not None and args.stride is not None:
        raise ValueError("give --fps (resample by timestamp) or --stride (every N-th frame), not both")
    if args.end is not None and args.end <= args.start:
        raise ValueError(f"--end {args.end:g} must be after --start {args.start:g} (seconds)")
    entries = load_entries(args.manifest, args.root)
    if not entries:
        raise ValueError(f"--manifest {args.manifest}: no video listed there")
    if not any(os.path.exists(entry.path) for entry in entries):
        raise ValueError(f"--manifest {args.manifest}: none of its {len(entries)} videos exists (first: "
                         f"{entries[0].path}); check --root")
    dist = init_distributed(args.device)
    try:
        tokenizer = load_tokenizer(args.tokenizer, str(dist.device), args.dtype)
        plan = window_plan(tokenizer, fps=args.fps, stride=args.stride, start=args.start, end=args.end,
                           max_windows=args.max_windows, resize=args.resize)
        info = write_token_dataset(
            entries, tokenizer, args.out, plan, videos_per_shard=args.videos_per_shard,
            batch_size=args.batch_size or DATASET_BATCH_SIZE, num_workers=args.num_workers, precision=args.dtype,
            info=dist, progress=not args.quiet, tokenizer_id=args.tokenizer, source=str(args.manifest),
            **budget_kwargs(args, tokenizer),
        )
    finally:
        cleanup(dist)
    if dist.is_main:
        print(f"token dataset {Path(args.out)}: {info['num_videos']} videos, {info['num_windows']} windows of "
              f"{info['tokens_per_window']} tokens in {len(info['shards'])} shard(s); {info['num_failed']} "
              f"failed (listed in {Path(args.out) / FAILED_NAME})")
        if info.get("budget") and info.get("mean_tokens") is not None:
            print(f"adaptive lengths: {info['mean_tokens']:.2f} tokens per window on average (of "
                  f"{info['tokens_per_window']})")
    return 0
