"""The two failure scenarios of `benchmarks/failover.py`, and the traffic they run under.

They start their servers with the test suite's harnesses (PostgreSQL, `computenet control` and
`computenet gateway` processes, a loopback Ray cluster, the in-process Ray fleet), which live under
tests/ and import no pytest: importing this package puts tests/ on `sys.path`, as pytest does.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from prerequisites import NotInstalled  # noqa: E402 (found on the path just set)

__all__ = ["NotInstalled", "one_line"]


def one_line(exc: BaseException) -> str:
    """A failed run's exception as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
