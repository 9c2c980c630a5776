"""``larp tokenize --manifest CSV_OR_FOLDER -o DATASET``: a token dataset (:mod:`larp.data.token_dataset`).

Run plainly it uses one process; under ``torchrun`` each rank writes its own shards (the rows are the same).
A rerun of the same command resumes a killed one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from larp.cli.arguments import nonnegative_int, positive_int
from larp.data.datasets import load_entries
from larp.data.token_dataset import FAILED_NAME, write_token_dataset
from larp.models.tokenizer import LARPTokenizer
from larp.training.distributed import cleanup, init_distributed
from larp.video_tokens import window_plan

__all__ = ["DEFAULT_NUM_WORKERS", "DEFAULT_VIDEOS_PER_SHARD", "add_dataset_args", "run_tokenize_dataset"]

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
        )
    finally:
        cleanup(dist)
    if dist.is_main:
        print(f"token dataset {Path(args.out)}: {info['num_videos']} videos, {info['num_windows']} windows of "
              f"{info['tokens_per_window']} tokens in {len(info['shards'])} shard(s); {info['num_failed']} "
              f"failed (listed in {Path(args.out) / FAILED_NAME})")
    return 0
