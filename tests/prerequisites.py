"""What the real servers the tests start need installed, free of pytest: the benchmarks start the same
servers (`postgres_server.py`, `e2e/ray/cluster.py`) and must run without it.

A harness that finds a program missing raises `NotInstalled`; tests/conftest.py turns that into a skip,
or a failure under CI (the `CI` environment variable is set), which installs everything.
"""

from __future__ import annotations


class NotInstalled(RuntimeError):
    """A program a harness needs is not installed; the message says how to install it."""
