"""The options every ``larp`` command spells the same way, and argparse types that refuse bad numbers.

Conventions (one for the whole command line):

* overrides of a recipe or protocol: ``--set KEY=VALUE [KEY=VALUE ...]``, repeatable anywhere on the line;
* ``-o/--out DIR`` names an output folder; a command that writes exactly one file takes ``-o/--output FILE``;
* ``--dtype`` is one of :data:`larp.precision.PRECISIONS`, default ``auto`` (bf16 on CUDA, fp32 elsewhere).

The number types raise ``argparse.ArgumentTypeError``, so a bad value stops the command before anything is
loaded, with a message that names the flag and what it expected (``--frames 0`` is an error, not the default).
"""

from __future__ import annotations

import argparse
import math

from larp.precision import PRECISIONS


def add_set_option(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--set KEY=VALUE ...`` into ``args.settings`` (a list; every occurrence extends it)."""
    parser.add_argument(
        "--set", dest="settings", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help=f"override {what} fields, e.g. --set {example} (repeatable)",
    )


def add_dtype_option(parser: argparse.ArgumentParser, what: str = "inference precision") -> None:
    parser.add_argument(
        "--dtype", choices=PRECISIONS, default="auto",
        help=f"{what}: autocast over fp32 weights (default auto: bf16 on CUDA, fp32 elsewhere; fp16 needs CUDA)",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def _bounded(parse, lowest: float, *, above: bool, highest: float | None = None, what: str):
    """An argparse type: ``parse(text)``, then ``lowest <= value`` (``<`` when ``above``) and
    ``value <= highest``; ``what`` is the expectation the error states."""

    def check(text: str):
        value = parse(text)
        if (value <= lowest if above else value < lowest) or (highest is not None and value > highest):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    check.__name__ = what  # argparse names the type in some messages
    return check


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


positive_int = _bounded(_int, 1, above=False, what="an integer >= 1")
nonnegative_int = _bounded(_int, 0, above=False, what="an integer >= 0")
positive_float = _bounded(_finite, 0.0, above=True, what="a number > 0")
nonnegative_float = _bounded(_finite, 0.0, above=False, what="a number >= 0")
probability = _bounded(_finite, 0.0, above=True, highest=1.0, what="a number in (0, 1]")
