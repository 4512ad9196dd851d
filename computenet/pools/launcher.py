"""Exec a replica's command so that it dies with the process that started it.

Run as ``python -m computenet.pools.launcher PARENT_PID -- argv...``. On Linux it sets
PR_SET_PDEATHSIG (kept across exec) so the kernel sends SIGKILL to the replica when
`computenet up` exits by any means, including its own crash or SIGKILL, then execs
the real command in place (same pid). Doing this in a separate program rather than a
`preexec_fn` avoids forking a multi-threaded parent into arbitrary Python code.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect; then nobody would kill us.
    if os.getppid() != parent_pid:
        sys.exit(f"launcher: parent {parent_pid} is gone, not starting")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m computenet.pools.launcher PARENT_PID -- COMMAND [ARGS...]")
    _die_with_parent(int(argv[0]))
    try:
        os.execvp(argv[2], argv[2:])
    except FileNotFoundError:
        print(
            f"launcher: {argv[2]!r} is not installed or not on PATH; install the engine's package", flush=True
        )
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
