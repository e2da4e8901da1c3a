"""argparse ``type=`` callables for numbers with an accepted range, and for paths that must not be empty.

Each returns the parsed value or raises ``argparse.ArgumentTypeError`` whose text names the accepted range, so
argparse prints one line (``error: argument --top: ... must be an integer >= 1, got 0``) and exits 2 before any
work starts. Names are stable: other command-line modules import them.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Optional


def _parse_int(text: str) -> int:
    try:
        return int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """An integer in [lo, hi] (either bound may be None for unbounded)."""

    def parse(text: str) -> int:
        value = _parse_int(text)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                want = f"an integer >= {lo}"
            elif lo is None:
                want = f"an integer <= {hi}"
            else:
                want = f"an integer in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be {want}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid <name> value" messages
    return parse


def float_range(lo: Optional[float] = None, hi: Optional[float] = None, *,
                lo_inclusive: bool = True, hi_inclusive: bool = True) -> Callable[[str], float]:
    """A finite number in the range lo..hi; each bound is inclusive unless told otherwise."""
    left = "[" if lo_inclusive else "("
    right = "]" if hi_inclusive else ")"
    want = f"a number in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def parse(text: str) -> float:
        value = _parse_float(text)
        if lo is not None and (value < lo or (value == lo and not lo_inclusive)):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        if hi is not None and (value > hi or (value == hi and not hi_inclusive)):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return int_range(1, None)(text)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return int_range(0, None)(text)


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    return float_range(0.0, 1.0, lo_inclusive=False)(text)


MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))


def threads(text: str) -> int:
    """A thread count: an integer in [1, MAX_THREADS]."""
    return int_range(1, MAX_THREADS)(text)


def path(text: str) -> str:
    """A file or folder path that is not empty (an empty one would silently mean the current directory)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("is empty; give a path")
    return text


positive_int.__name__ = "integer"
nonnegative_int.__name__ = "integer"
fraction.__name__ = "number"
threads.__name__ = "integer"
path.__name__ = "path"

def comma_list(item: Callable[[str], object], what: str, repeats: str = "refuse") -> Callable[[str], tuple]:
    """Comma-separated values (``2048,4096``), each parsed by ``item`` (e.g. ``int_range(0)``): at least one, no empty
    item. A value given twice is refused (``repeats='refuse'``: it would silently evaluate the same thing twice) or
    taken once (``'once'``: a benchmark measures each setting once, as its thread counts)."""

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in str(text).split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(f"needs at least one {what}")
        if not all(parts):
            raise argparse.ArgumentTypeError(f"empty item in {text!r}; separate {what}s with single commas")
        values = [item(p) for p in parts]
        if repeats == "once":
            return tuple(dict.fromkeys(values))
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise argparse.ArgumentTypeError(f"{what} {parts[values.index(repeated[0])]} is given twice in {text!r}")
        return tuple(values)

    parse.__name__ = "list"
    return parse


def checked(check: Callable[[str], object], name: str) -> Callable[[str], object]:
    """An argparse ``type=`` from a project check that raises SqueezeError (e.g. the format names, whose list lives with
    the backends): its one-line message becomes argparse's, so a bad value exits 2 before any work, as a bad number
    does."""
    from .errors import SqueezeError

    def parse(text: str):
        try:
            return check(text)
        except SqueezeError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def given_options(args, actions) -> list:
    """The option strings among ``actions`` (argparse actions, e.g. an argument group's) that the command line set to
    something other than their default: a subcommand that serves two kinds of input refuses the other kind's options
    by name instead of ignoring them."""
    return [a.option_strings[0] for a in actions
            if a.option_strings and getattr(args, a.dest, a.default) != a.default]


__all__ = ["MAX_THREADS", "comma_list", "float_range", "fraction", "given_options", "int_range", "nonnegative_int", "path",
           "positive_int", "threads"]
