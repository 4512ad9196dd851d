"""The driver's side of the agent protocol: start the agent, send requests, restart it when it dies.

The agent runs under the local pool's launcher, so it dies with the control plane even on SIGKILL;
it also exits when its stdin closes. Its stderr (Ray's own logging, and the agent's) goes to
`<state-dir>/ray/<pool>-agent.log`. An agent that exits (a crash, a lost connection to the cluster)
fails the requests in flight with `AgentError` and is started again on the next request: the replicas
are detached actors and do not notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .. import processes

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0  # ray.init against a cluster that answers but is slow to let us in
REQUEST_TIMEOUT_S = 30.0
STREAM_LIMIT_BYTES = 64 * 2**20  # one reply may carry many replicas' facts, or a long log


class AgentError(RuntimeError):
    """The agent could not be started or reached, or it failed a request; the message says why."""


class Agent:
    def __init__(self, address: str, namespace: str, log_path: Path) -> None:
        launcher = [sys.executable, "-m", "computenet.pools.launcher", str(os.getpid()), "--"]
        agent = [sys.executable, "-m", "computenet.pools.ray.agent", "--address", address]
        self._argv = [*launcher, *agent, "--namespace", namespace]
        self._address = address
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def call(self, op: str, timeout_s: float = REQUEST_TIMEOUT_S, **args: Any) -> Any:
        """Send one request and return its result; `KeyError` for `not_found`, `AgentError` otherwise."""
        proc = await self._running()
        request_id = next(self._ids)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"id": request_id, "op": op, "args": args}).encode() + b"\n")
            await proc.stdin.drain()
            async with asyncio.timeout(timeout_s):
                message = await reply
        except (ConnectionError, TimeoutError) as exc:
            raise AgentError(f"Ray agent for {self._address}: {op} got no answer ({exc!r})") from None
        finally:
            self._pending.pop(request_id, None)
        if message.get("ok"):
            return message.get("result")
        if message.get("kind") == "not_found":
            raise KeyError(message.get("error"))
        raise AgentError(f"Ray agent for {self._address}: {op} failed: {message.get('error')}")

    async def close(self) -> None:
        """Stop the agent: close its stdin, give it a moment to disconnect from Ray, then kill it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
            await processes.terminate(proc, grace_s=1.0)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def _running(self) -> asyncio.subprocess.Process:
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                await self.close()
                self._proc = await self._spawn()
                self._reader = asyncio.create_task(self._read(self._proc), name=f"ray-agent:{self._address}")
            return self._proc

    async def _spawn(self) -> asyncio.subprocess.Process:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                limit=STREAM_LIMIT_BYTES,
            )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                first = await self._line(proc)
        except TimeoutError:
            first = {"fatal": f"no answer in {CONNECT_TIMEOUT_S:.0f}s"}
        if first.get("ready"):
            return proc
        await processes.terminate(proc, grace_s=1.0)
        why = first.get("fatal") or f"the agent exited; see {self._log_path}"
        raise AgentError(f"Ray pool at {self._address}: {why}")

    async def _line(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            return {}
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            log.warning("Ray agent for %s wrote a line that is not JSON: %r", self._address, line[:200])
            return {}
        return message if isinstance(message, dict) else {}

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Hand each reply to its caller; when the agent exits, fail whatever still waits."""
        try:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                with contextlib.suppress(json.JSONDecodeError):
                    message = json.loads(line)
                    request_id = message.get("id") if isinstance(message, dict) else None
                    waiter = self._pending.get(request_id) if isinstance(request_id, int) else None
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message)
        finally:
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError(f"the agent stopped; see {self._log_path}"))
