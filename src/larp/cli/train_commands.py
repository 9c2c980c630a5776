"""``larp train-tokenizer`` and ``larp train-generator``: training from a YAML recipe (one process, or DDP
under torchrun)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from larp.cli.arguments import add_device_option, add_set_option

logger = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    tokenizer = commands.add_parser(
        "train-tokenizer",
        help="train a LARP tokenizer (with the AR prior) from a recipe",
        description="Train a LARP tokenizer. Launch with torchrun --nproc_per_node N for DDP; "
        "multi-node through torchrun's rendezvous options.",
    )
    _add_run_args(tokenizer, "tiny-cpu", "steps=4000 optim.lr=3e-4")
    tokenizer.set_defaults(run=run_train_tokenizer)

    generator = commands.add_parser(
        "train-generator",
        help="train an AR generator on a frozen tokenizer's tokens from a recipe",
        description="Train a LARP AR generator (class-conditional or frame prediction) on the tokens of a frozen "
        "tokenizer, encoded on the fly or read from a token cache (tokens.cache). Launch with torchrun "
        "--nproc_per_node N for DDP.",
    )
    _add_run_args(generator, "ar-tiny-cpu", "tokens.tokenizer=runs/t/tokenizer steps=2000")
    generator.set_defaults(run=run_train_generator)


def _add_run_args(parser: argparse.ArgumentParser, example: str, overrides: str) -> None:
    parser.add_argument(
        "--config", required=True, metavar="RECIPE",
        help=f"recipe YAML file, or the name of a packaged recipe (e.g. {example})",
    )
    add_set_option(parser, "recipe", overrides)
    parser.add_argument("--run-dir", default=None, metavar="DIR", help="run folder (default runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its newest checkpoint")
    add_device_option(parser)


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from larp.training.recipe import load_recipe, resolve_recipe
    from larp.training.tokenizer_trainer import train_tokenizer

    path = resolve_recipe(args.config)
    recipe = load_recipe(path, args.settings)
    run_dir = Path(args.run_dir or Path("runs") / path.stem)
    folder = train_tokenizer(recipe, run_dir, resume=args.resume, device=args.device, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # one message under torchrun
        print(f"tokenizer written to {folder}  (try: larp reconstruct VIDEO --tokenizer {folder} -o recon.mp4)")
    return 0


def run_train_generator(args: argparse.Namespace) -> int:
    from larp.training.generator_trainer import train_generator
    from larp.training.recipe import GeneratorTrainConfig, load_recipe, resolve_recipe

    path = resolve_recipe(args.config)
    recipe = load_recipe(path, args.settings, GeneratorTrainConfig)
    run_dir = Path(args.run_dir or Path("runs") / path.stem)
    folder = train_generator(recipe, run_dir, resume=args.resume, device=args.device, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":
        what = "--condition VIDEO" if recipe.model.frame_prediction else "--class 0 1"
        print(f"generator written to {folder}  (try: larp sample --generator {folder} "
              f"--tokenizer {recipe.tokens.tokenizer} {what} -o samples/)")
    return 0
