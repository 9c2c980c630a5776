"""``larp tokenize --config RECIPE -o CACHE``: a generator recipe's token cache, built ahead of training.

The cache is exactly the one ``larp train-generator`` builds for itself (and then reuses): the recipe's data,
``tokens.*`` and frame-prediction settings, then ``--set``, then ``--manifest`` / ``--tokenizer`` / ``-o`` /
``--dtype`` / ``--batch-size`` where given. It is a token dataset (Parquet shards + _dataset.json) per split.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from larp.models.tokenizer import LARPTokenizer
from larp.training.recipe import DataConfig, GeneratorTrainConfig, TokenSourceConfig, load_recipe, resolve_recipe
from larp.training.token_sources import build_token_cache, split_info


def run_tokenize_cache(
    args: argparse.Namespace, load_tokenizer: Callable[[str, str | None, str], LARPTokenizer]
) -> int:
    """Build (or check and reuse) the token cache of ``args.config`` in ``args.out``.

    ``load_tokenizer(spec, device, precision)`` is the CLI's tokenizer loader (``larp.cli.tokenizer_commands``,
    which dispatches here: passed in, so that the two modules do not import each other).
    """
    clip_flags = [flag for flag, given in (
        ("--stochastic", getattr(args, "stochastic", False)), ("--fps", getattr(args, "fps", None) is not None),
        ("--stride", getattr(args, "stride", None) is not None), ("--start", bool(getattr(args, "start", 0))),
        ("--end", getattr(args, "end", None) is not None), ("--max-windows", getattr(args, "max_windows", None)),
        ("--resize", getattr(args, "resize", "crop") != "crop")) if given]
    if clip_flags:
        raise ValueError(f"{', '.join(clip_flags)} apply to video files and token datasets (--manifest without "
                         f"--config); a recipe's token cache takes whole clips of the tokenizer's length, encoded "
                         f"deterministically")
    data, tokens, condition_frames = cache_request(args)
    if not tokens.tokenizer:
        raise ValueError("--tokenizer is required (or a --config recipe with tokens.tokenizer)")
    tokenizer = load_tokenizer(tokens.tokenizer, args.device, tokens.precision)
    folder = build_token_cache(tokenizer, args.out, data=data, tokens=tokens, condition_frames=condition_frames,
                               progress=not args.quiet)
    train, val = split_info(folder / "train"), split_info(folder / "val")
    print(f"token cache {folder}: {train['num_windows']} training rows, {val['num_windows']} validation rows")
    return 0


def cache_request(args: argparse.Namespace) -> tuple[DataConfig, TokenSourceConfig, int | None]:
    """(DataConfig, TokenSourceConfig, condition_frames) of ``tokenize --config``: the generator recipe's, then
    ``--set``, then ``--manifest`` / ``--tokenizer`` / ``-o`` / ``--dtype`` / ``--batch-size`` where given."""
    settings = list(args.settings)
    if args.tokenizer:  # a recipe needs its tokenizer; --tokenizer may stand in for it
        settings.append(f"tokens.tokenizer={args.tokenizer}")
    recipe = load_recipe(resolve_recipe(args.config), settings, GeneratorTrainConfig)
    data, tokens = recipe.data, recipe.tokens
    condition_frames = recipe.condition_frames if recipe.model.frame_prediction else None
    if args.manifest:
        data = dataclasses.replace(data, manifest=args.manifest)
    tokens = dataclasses.replace(
        tokens,
        cache=args.out,
        precision=tokens.precision if args.dtype == "auto" else args.dtype,
        encode_batch_size=args.batch_size or tokens.encode_batch_size,
    )
    return data, tokens, condition_frames
