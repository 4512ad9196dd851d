"""argparse types for the benchmarks' flags: a bad value is a parser error naming the flag.

A value that only fails once the run is under way (a zero time scale, a rate of `abc`, a
CPU list `os.sched_setaffinity` cannot read) would otherwise end minutes of work with a
traceback; as a `type=` it stops the run before anything starts, as
`error: argument --time-scale: must be a positive number, got '0'`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def at_least(minimum: float, cast: Callable[[str], N]) -> Callable[[str], N]:
    """A number >= `minimum` (an int when `cast` is int)."""
    noun = "an integer" if cast is int else "a number"
    return _checked(cast, lambda value: value >= minimum, f"{noun} >= {minimum:g}")


def positive(cast: Callable[[str], N]) -> Callable[[str], N]:
    """A number > 0 (an int when `cast` is int)."""
    noun = "a positive integer" if cast is int else "a positive number"
    return _checked(cast, lambda value: value > 0, noun)


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    return _checked(float, lambda value: 0 < value <= 1, "a number in (0, 1]")(text)


def listed(item: Callable[[str], N]) -> Callable[[str], list[N]]:
    """A comma-separated list, each element parsed by `item`."""

    def parse(text: str) -> list[N]:
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"must list at least one value, got {text!r}")
        return values

    return parse


def cpu_set(text: str) -> set[int]:
    """The CPUs of a `taskset -c` list such as `0-2,5`; ValueError when it is not one."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        low, high = int(first), int(last or first)
        if low < 0 or high < low:
            raise ValueError(part)
        cpus.update(range(low, high + 1))
    return cpus


def cpu_list(text: str) -> str:
    """A `taskset -c` list, checked and kept as text ('' for no pinning)."""
    if text:
        try:
            cpu_set(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a CPU list like 0 or 0-2,5, got {text!r}") from None
    return text


def _checked(cast: Callable[[str], N], ok: Callable[[N], bool], wanted: str) -> Callable[[str], N]:
    def parse(text: str) -> N:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not ok(value):  # nan fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse
