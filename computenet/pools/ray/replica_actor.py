"""The replica actor: runs on a Ray node and keeps one engine process running there.

It is an async actor, created detached by the agent with the replica's name, so it outlives the agent
and the control plane. On its first call it starts the engine as a child process (bound to the node's
IP, `CUDA_VISIBLE_DEVICES` set to the GPUs Ray gave it) through the local pool's launcher, which kills
the engine if the actor's worker process dies: an actor that is gone leaves no engine behind. When the
engine exits the actor restarts it with exponential backoff, as the local pool's supervisor does, and
reports the facts (`facts()`); the driver decides readiness by probing the engine's health path.

The engine's output goes to a file on the node (`<tmp>/computenet-ray/<node id>/<replica>.log`,
appended across restarts) that `logs()` reads back; `stop()` removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from .. import processes
from ..local import STABLE_RUN_S, render_launch
from .wire import ActorFacts, spec_from_wire

log = logging.getLogger(__name__)


class ReplicaActor:
    """One replica on one Ray node. Wrapped with `ray.remote` by the agent, never used directly."""

    def __init__(self, spec: dict[str, Any], pool: str, kv_events: bool) -> None:
        context = ray.get_runtime_context()
        gpu_ids = tuple(int(i) for i in context.get_accelerator_ids().get("GPU", []))
        self._host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._kv_events = kv_events
        self._facts = ActorFacts(
            name=spec["name"],
            pool=pool,
            spec=spec_from_wire(spec),
            node_id=context.get_node_id(),
            gpu_ids=gpu_ids,
        )
        self._log_path = log_dir_of(self._facts.node_id) / f"{spec['name']}.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def facts(self) -> dict[str, Any]:
        """Where the replica runs and how its engine is doing; starts supervising on the first call."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"replica:{self._facts.name}")
        return self._facts.to_wire()

    async def logs(self, tail_lines: int | None = None) -> str:
        if not self._log_path.exists():
            return ""
        return processes.read_log(self._log_path, tail_lines)

    async def stop(self) -> None:
        """Stop the engine (SIGTERM, then SIGKILL after a grace period) and remove its log."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._proc is not None:
            await processes.terminate(self._proc)
        self._facts = replace(self._facts, running=False, url=None, pid=None)
        with contextlib.suppress(OSError):
            self._log_path.unlink()

    async def _supervise(self) -> None:
        spec = self._facts.spec
        backoff_s = spec.initial_backoff_s
        while True:
            ran_s = await self._run_once()
            if ran_s >= STABLE_RUN_S:
                backoff_s = spec.initial_backoff_s
            self._facts = replace(
                self._facts, running=False, url=None, pid=None, restarts=self._facts.restarts + 1
            )
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, spec.max_backoff_s)

    async def _run_once(self) -> float:
        """Start the engine and wait for it to exit; return how long it ran."""
        # The GPUs are Ray's to hand out on its nodes: the scheduler chose how many, Ray which ones.
        spec = replace(self._facts.spec, gpu_ids=())
        launch = render_launch(
            spec, self._host, processes.free_ports(3, self._host), kv_events=self._kv_events
        )
        env = {**(launch.env or {}), "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in self._facts.gpu_ids)}
        url = f"http://{self._host}:{launch.port}"
        with processes.open_log(self._log_path) as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"--- {stamp} starting (restart {self._facts.restarts}) on {url}\n".encode())
            log_file.flush()
            self._proc = await processes.spawn(launch.argv, log_file, env)
        started = time.monotonic()
        self._facts = replace(
            self._facts,
            running=True,
            url=url,
            pid=self._proc.pid,
            started_at=time.time(),
            message="",
            kv_events=launch.kv_events,
            kv_events_replay=launch.kv_events_replay,
        )
        code = await self._proc.wait()
        self._facts = replace(self._facts, last_exit_code=code, message=f"exited with code {code}")
        log.warning("replica %s exited with code %s", spec.name, code)
        return time.monotonic() - started


def log_dir_of(node_id: str) -> Path:
    """Where replica actors on node `node_id` keep their engines' logs (for tests and operators)."""
    return Path(tempfile.gettempdir(), "computenet-ray", node_id)
