"""The `local` pool: replicas are child processes of this machine on 127.0.0.1 ports.

One supervisor task per replica starts the engine, probes its health path until it
answers, watches the process, and restarts it with exponential backoff when it dies.
Output goes to ``<state-dir>/logs/<replica>.log``, appended across restarts.

With `kv_events` on, each start of an engine whose KV-cache events the gateway reads
(`sim`, `vllm`) is told to publish them on fresh 127.0.0.1 ports, and the replica's
state says where, so the gateway's precise prefix routing hears every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from computenet.api import DeclaredGpus, NodeInfo
from computenet.engines import LaunchSpec, get_engine

from . import processes
from .base import ReplicaPhase, ReplicaSpec, ReplicaState
from .kv_events import kv_events_wiring

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.1  # while starting: how often to ask /health
LIVENESS_INTERVAL_S = 1.0  # once ready
PROBE_TIMEOUT_S = 1.0
FAILED_PROBES_TO_UNREADY = 3
STABLE_RUN_S = 10.0  # a replica that ran this long ready has its backoff reset


@dataclass(frozen=True)
class Launch:
    """One start of a replica's process: its command, environment, port and KV-event sockets."""

    argv: list[str]
    env: dict[str, str] | None
    port: int
    kv_events: str | None = None
    kv_events_replay: str | None = None


def render_launch(spec: ReplicaSpec, host: str, ports: Sequence[int], *, kv_events: bool) -> Launch:
    """The command for `spec` on `ports` (HTTP, KV events, their replay). Pure, so tests read the argv."""
    port, events_port, replay_port = ports
    wiring = kv_events_wiring(spec.engine, spec.args, host, events_port, replay_port) if kv_events else None
    args = {**spec.args, **wiring.args} if wiring is not None else spec.args
    argv = get_engine(spec.engine).command(
        LaunchSpec(spec.served_name, spec.source, host, port, args, spec.gpus)
    )
    env = dict(wiring.env) if wiring is not None else {}
    if spec.gpu_ids:  # the GPUs the scheduler chose, and no others
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpu_ids)
    if wiring is None:
        return Launch(argv, env or None, port)
    return Launch(argv, env or None, port, wiring.endpoint, wiring.replay_endpoint)


class LocalPool:
    def __init__(
        self,
        *,
        name: str = "local",
        state_dir: Path,
        host: str = "127.0.0.1",
        kv_events: bool = False,
        region: str = "local",
        zone: str = "local",
        gpus: Sequence[DeclaredGpus] = (),
    ) -> None:
        self.name = name
        self.region = region
        self.zone = zone
        self._node = _this_machine(gpus)
        self.kv_events = kv_events  # start engines publishing KV-cache events (needs pyzmq, msgpack)
        self._log_dir = state_dir / "logs"
        self._host = host
        self._supervisors: dict[str, _Supervisor] = {}
        self._changed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    async def start(self, spec: ReplicaSpec) -> None:
        if spec.name in self._supervisors:
            raise ValueError(f"replica {spec.name!r} already runs in pool {self.name!r}")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S))
        supervisor = _Supervisor(spec, self, self._http, host=self._host, log_path=self.log_path(spec.name))
        self._supervisors[spec.name] = supervisor
        supervisor.task = asyncio.create_task(supervisor.run(), name=f"replica:{spec.name}")
        self._changed.set()

    async def stop(self, name: str) -> None:
        supervisor = self._supervisors.get(name)
        if supervisor is None:
            return
        await supervisor.stop()
        del self._supervisors[name]
        self._changed.set()

    async def nodes(self) -> list[NodeInfo]:
        return [self._node]

    async def replicas(self) -> list[ReplicaState]:
        return [s.state for s in self._supervisors.values()]

    async def logs(self, name: str, *, tail_lines: int | None = None) -> str:
        path = self.log_path(name)
        if not path.exists():
            raise KeyError(f"no logs for replica {name!r}")
        return processes.read_log(path, tail_lines)

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    def watch(self) -> asyncio.Event:
        return self._changed

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in list(self._supervisors)))
        if self._http is not None:
            await self._http.close()
            self._http = None


def _this_machine(declared: Sequence[DeclaredGpus]) -> NodeInfo:
    """This machine as one node. Its GPUs are the declared ones (for `sim`); one GPU model per node."""
    if len({g.type for g in declared}) > 1:
        raise ValueError("a local pool declares one GPU model; use one pool per model")
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return NodeInfo(
        name=socket.gethostname(),
        cpu=float(os.cpu_count() or 1),
        memory_gb=round(pages / 2**30, 1),
        gpus=sum(g.count for g in declared),
        gpu_type=declared[0].type if declared else "",
        gpu_memory_gb=declared[0].memory_gb if declared else 0.0,
        address="127.0.0.1",
    )


class _Supervisor:
    """Keeps one replica running. Its `state` is the facts the pool reports."""

    def __init__(
        self, spec: ReplicaSpec, pool: LocalPool, http: aiohttp.ClientSession, *, host: str, log_path: Path
    ) -> None:
        self.state = ReplicaState(spec=spec, pool=pool.name, phase=ReplicaPhase.STARTING, node=spec.node)
        self.task: asyncio.Task[None] | None = None
        self._pool = pool
        self._http = http
        self._host = host
        self._log_path = log_path
        self._engine = get_engine(spec.engine)
        self._proc: asyncio.subprocess.Process | None = None

    def _update(self, **changes: object) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]
        self._pool.watch().set()

    async def run(self) -> None:
        backoff_s = self.state.spec.initial_backoff_s
        while True:
            ran_s = await self._run_once()
            if ran_s >= STABLE_RUN_S:
                backoff_s = self.state.spec.initial_backoff_s
            self._update(
                phase=ReplicaPhase.BACKOFF,
                url=None,
                pid=None,
                restarts=self.state.restarts + 1,
                kv_events=None,
                kv_events_replay=None,
            )
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self.state.spec.max_backoff_s)

    async def _run_once(self) -> float:
        """Start the process, follow it until it exits; return how long it was ready."""
        spec = self.state.spec
        launch = render_launch(
            spec, self._host, processes.free_ports(3, self._host), kv_events=self._pool.kv_events
        )
        url = f"http://{self._host}:{launch.port}"
        with processes.open_log(self._log_path) as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"--- {stamp} starting (restart {self.state.restarts}) on {url}\n".encode())
            log_file.flush()
            self._proc = await processes.spawn(launch.argv, log_file, launch.env)
        self._update(
            phase=ReplicaPhase.STARTING,
            url=url,
            pid=self._proc.pid,
            started_at=time.time(),
            kv_events=launch.kv_events,
            kv_events_replay=launch.kv_events_replay,
        )
        ready_at = await self._follow(self._proc, url)
        code = await self._proc.wait()
        self._update(last_exit_code=code, message=f"exited with code {code}")
        log.warning("replica %s exited with code %s", spec.name, code)
        return time.monotonic() - ready_at if ready_at else 0.0

    async def _follow(self, proc: asyncio.subprocess.Process, url: str) -> float | None:
        """Probe health while the process lives; flip Ready/Starting as the probe says."""
        ready_at: float | None = None
        failures = 0
        exited = asyncio.ensure_future(proc.wait())
        try:
            while not exited.done():
                healthy = await self._probe(url)
                if healthy and self.state.phase != ReplicaPhase.READY:
                    ready_at = ready_at or time.monotonic()
                    self._update(phase=ReplicaPhase.READY, message="")
                failures = 0 if healthy else failures + 1
                if failures >= FAILED_PROBES_TO_UNREADY and self.state.phase == ReplicaPhase.READY:
                    self._update(phase=ReplicaPhase.STARTING, message="health probe failing")
                interval = LIVENESS_INTERVAL_S if self.state.phase == ReplicaPhase.READY else PROBE_INTERVAL_S
                await asyncio.wait({exited}, timeout=interval)
        finally:
            exited.cancel()
            await asyncio.wait({exited})
        return ready_at

    async def _probe(self, url: str) -> bool:
        try:
            async with self._http.get(url + self._engine.health_path) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def stop(self) -> None:
        self._update(phase=ReplicaPhase.STOPPING)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self._proc is not None:
            await processes.terminate(self._proc)
