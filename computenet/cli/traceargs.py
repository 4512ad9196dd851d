"""Flags and checks shared by the commands that read a trace: `bench replay` and `sim replay`.

Both take the same `--trace/--trace-format/--speedup/--limit/--duration`, parse
numbers the same way and fail the same way: one `error:` line and exit 2 for
input the user must fix, before any request is sent or simulated.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import TypeVar

from computenet.workloads import TraceRequest, read_trace, select

_Number = TypeVar("_Number", int, float)


class BadInput(Exception):
    """A flag or file the user must fix; the command exits 2."""


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, metavar="FILE", help="Mooncake .jsonl or Azure .csv trace")
    parser.add_argument(
        "--trace-format",
        choices=["auto", "mooncake", "azure"],
        default="auto",
        help="default: from the file's suffix, then its content",
    )
    parser.add_argument("--speedup", default="1", metavar="X", help="divide arrival times by X")
    parser.add_argument("--limit", metavar="N", help="replay only the first N requests")
    parser.add_argument(
        "--duration", metavar="S", help="replay only requests arriving in the first S seconds"
    )


def duration_s(args: argparse.Namespace) -> float | None:
    return None if args.duration is None else parse_number("--duration", args.duration, float)


def selected_requests(args: argparse.Namespace) -> list[TraceRequest]:
    """The trace's requests that `--speedup`, `--limit` and `--duration` select (TraceError if unreadable)."""
    speedup = parse_number("--speedup", args.speedup, float)
    limit = None if args.limit is None else parse_number("--limit", args.limit, int)
    requests = read_trace(args.trace, args.trace_format)
    selected = select(requests, limit=limit, duration_s=duration_s(args), speedup=speedup)
    if not selected:
        raise BadInput(f"{args.trace}: no requests to replay (check --limit and --duration)")
    return selected


def parse_number(
    flag: str, text: str, cast: Callable[[str], _Number], *, allow_zero: bool = False
) -> _Number:
    """A finite number > 0 (>= 0 with `allow_zero`), or `BadInput` naming the flag."""
    noun = ("a non-negative" if allow_zero else "a positive") + (" integer" if cast is int else " number")
    try:
        value = cast(text)
    except ValueError:
        raise BadInput(f"{flag} must be {noun}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise BadInput(f"{flag} must be {noun}, got {text!r}")
    return value


def error(message: str, code: int) -> int:
    """Print one `error:` line and return the exit status to use."""
    print(f"error: {message}", file=sys.stderr)
    return code
