"""Child processes for the local pool: spawn into their own process group, stop the group.

Each replica gets its own session (so a Ctrl-C in the terminal reaches only
`computenet up`, which then stops replicas in order) and runs under the launcher,
which ties its life to ours. Stopping signals the whole group, so anything the
engine forked goes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections import deque
from pathlib import Path
from typing import IO

TERMINATE_GRACE_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now. A rare race is survived: the replica then
    fails to bind, exits, and its restart picks another port."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nobody listens on right now (held open together, so never the same one)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


async def spawn(
    argv: list[str], log: IO[bytes], env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    wrapped = [sys.executable, "-m", "computenet.pools.launcher", str(os.getpid()), "--", *argv]
    return await asyncio.create_subprocess_exec(
        *wrapped,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


async def terminate(proc: asyncio.subprocess.Process, grace_s: float = TERMINATE_GRACE_S) -> int:
    """SIGTERM the process group, SIGKILL it after `grace_s`; return the exit code."""
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    # The leader is gone; make sure no straggler it forked stays behind.
    _signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode if proc.returncode is not None else -1


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_log(path: Path, tail_lines: int | None = None) -> str:
    """A replica's log file, or its last `tail_lines` lines, without reading it all into memory first."""
    with path.open(errors="replace") as f:
        return "".join(deque(f, maxlen=tail_lines) if tail_lines else f)


def open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")
