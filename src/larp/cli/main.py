"""The ``larp`` command: argument parsing and dispatch. Each subcommand lives in its own module.

Every subcommand fails with one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
The conventions every command follows (``--set``, ``-o/--out DIR``, ``--dtype``) are in :mod:`larp.cli.arguments`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from larp.version import __version__
from larp.cli import (
    budget_commands,
    data_commands,
    demo_commands,
    evaluate_commands,
    experiment_commands,
    generate_commands,
    info_commands,
    llm_commands,
    tokenizer_commands,
    train_commands,
    weights_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="larp",
        description="LARP: discrete video tokenization and autoregressive video generation.",
    )
    parser.add_argument("--version", action="version", version=f"larp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print results and errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info_commands.register(commands)
    tokenizer_commands.register(commands)
    train_commands.register(commands)
    generate_commands.register(commands)
    evaluate_commands.register(commands)
    weights_commands.register(commands)
    data_commands.register(commands)
    demo_commands.register(commands)
    llm_commands.register(commands)
    budget_commands.register(commands)
    experiment_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        overrides = [item for item in unknown if "=" in item and not item.startswith("-")]
        if overrides:  # the KEY=VALUE positionals of larp 0.1.0: fail clearly, never ignore them
            print(f"larp {args.command}: error: overrides are given with --set: --set {' '.join(overrides)}",
                  file=sys.stderr)
            return 2
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # the reader went away (`larp info ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("larp: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for users; the traceback on request
        if args.debug:
            raise
        message = str(error).strip().replace("\n", " ") or type(error).__name__
        print(f"larp {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
