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


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in (0, 1]."""
    value = _finite(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


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
