"""A real redis-server for tests: started on a free 127.0.0.1 port in a temp dir, stopped after.

Use it as a context manager (`with RedisServer.started() as server: server.url`) or through the
`redis_server` fixture (import it into a test module or list this module in `pytest_plugins`).
It persists nothing (`--save '' --appendonly no`) and can be stopped and started again on the same
port, which is how tests take Redis away from a gateway and give it back.

When redis-server is not installed the tests that need it are skipped, except under CI (the `CI`
environment variable is set), where a missing server is a failure: CI installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def redis_server_binary(candidates: Sequence[str] = ("redis-server", "/usr/bin/redis-server")) -> str:
    """The redis-server executable; skips the test when it is missing (fails it under CI)."""
    for candidate in candidates:
        if found := shutil.which(candidate):
            return found
    reason = "redis-server is not installed (apt-get install redis-server); the Redis tests need a real one"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI must run them")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; `stop()` then `start()` brings it back on the same port, empty."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = redis_server_binary()
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="computenet-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    @contextlib.contextmanager
    def started(cls, port: int | None = None) -> Iterator[RedisServer]:
        server = cls(port)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            server._dir.cleanup()

    def start(self) -> None:
        if self._process is not None:
            return
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        argv += ["--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log")]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = Path(self._dir.name, "redis.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.01)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def ping(self) -> bool:
        """True when the server answers PING (spoken raw, so this helper needs no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    with RedisServer.started() as server:
        yield server
