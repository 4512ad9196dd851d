"""`RayPool`: the `PoolDriver` for a Ray cluster reached by address.

Design, and why:

* **An agent process per pool.** `ray.init` connects a whole process to one cluster, and a control
  plane may manage several Ray pools (and must not take Ray's threads and signal handlers into the
  process that serves the control API), so each pool talks to its cluster through its own agent
  subprocess (`agent.py`, JSON lines over stdin/stdout). The agent keeps no state of its own: if it
  dies, the next request starts a new one and nothing is lost.
* **A detached actor per replica** (`replica_actor.py`), named after the replica, pinned to the node the
  scheduler chose with a hard node affinity, holding the replica's GPUs as Ray resources. It runs the
  engine as its child process, restarts it with backoff, and keeps its log on the node. Detached
  actors outlive the control plane: a new `RayPool` on the same cluster adopts them, as a new kubelet
  would find its pods, so restarting the control plane does not interrupt serving.
* **Readiness is probed by the driver**, over HTTP on the engine's health path at the node's address:
  the same path the gateway's requests take, so `Ready` means reachable from the control plane's side.
* **Loss is a fact Ray reports**: a replica whose node is dead, or whose actor vanished without
  `stop()`, is `Lost`. Ray does not restart it (`max_restarts=0`), since the node it was pinned to is
  gone; the reconciler places it anew on the nodes that are left.

`close()` lets go of the cluster (the agent, the refresh task, the probe session) and leaves the
replica actors running, as the `PoolDriver` protocol asks of remote pools: a restarted control plane
adopts them without a gap in service. A replica ends when it is stopped (`stop`, which the reconciler
calls for a deployment scaled down or deleted, and the pool set for every replica of a deleted Pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from computenet.api import NodeInfo, PoolSpec
from computenet.engines import get_engine
from computenet.engines.sim.catalog import load_catalog

from ..base import ReplicaPhase, ReplicaSpec, ReplicaState
from ..local import PROBE_TIMEOUT_S
from .client import Agent, AgentError
from .inventory import node_info
from .status import Observed, Readiness, replica_state
from .wire import ActorFacts, spec_to_wire

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "computenet"
REFRESH_S = 0.5  # how often the driver asks the cluster for its replicas' facts and probes them
STOP_TIMEOUT_S = 30.0
ACTOR_VANISHED = "its Ray actor is gone: its worker process died (`ray list actors --detail` says why)"


class RayPool:
    def __init__(
        self,
        *,
        name: str,
        spec: PoolSpec,
        state_dir: Path,
        kv_events: bool = False,
        namespace: str = DEFAULT_NAMESPACE,
        refresh_s: float = REFRESH_S,
    ) -> None:
        if spec.type != "ray" or not spec.address:
            raise ValueError(f"pool {name!r}: RayPool needs spec.type ray and spec.address, got {spec.type}")
        self.name = name
        self.region = spec.region
        self.zone = spec.zone
        self.address = spec.address
        self._kv_events = kv_events
        self._refresh_s = refresh_s
        self._agent = Agent(spec.address, namespace, state_dir / "ray" / f"{name}-agent.log")
        self._gpu_memory_gb = {gpu_id: gpu.memory_gib for gpu_id, gpu in load_catalog().gpus.items()}
        self._seen: dict[str, Observed] = {}
        self._stopping: set[str] = set()
        self._states: dict[str, ReplicaState] = {}
        self._alive: frozenset[str] = frozenset()
        self._error: str | None = None  # why the last refresh failed, if it did
        self._changed = asyncio.Event()
        self._refreshed = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def nodes(self) -> list[NodeInfo]:
        raw = await self._agent.call("nodes")
        return [node_info(node, self._gpu_memory_gb) for node in raw]

    async def start(self, spec: ReplicaSpec) -> None:
        await self._ensure_refreshing()
        current = self._states.get(spec.name)
        if current is not None and current.phase != ReplicaPhase.LOST:
            raise ValueError(f"replica {spec.name!r} already runs in pool {self.name!r}")
        self._seen[spec.name] = Observed(spec=spec)
        await self._agent.call("start", spec=spec_to_wire(spec), pool=self.name, kv_events=self._kv_events)
        self._publish()

    async def stop(self, name: str) -> None:
        self._stopping.add(name)
        self._publish()
        try:
            await self._agent.call("stop", timeout_s=STOP_TIMEOUT_S, name=name)
        finally:
            self._stopping.discard(name)
            self._seen.pop(name, None)
            self._publish()

    async def replicas(self) -> list[ReplicaState]:
        await self._ensure_refreshing()
        if self._error is not None:
            raise AgentError(self._error)
        return list(self._states.values())

    async def logs(self, name: str, *, tail_lines: int | None = None) -> str:
        text: str = await self._agent.call("logs", name=name, tail_lines=tail_lines)
        return text

    @property
    def agent_pid(self) -> int | None:
        """The agent process's pid while it runs (for operators, and for tests that kill it)."""
        return self._agent.pid

    def watch(self) -> asyncio.Event:
        return self._changed

    async def close(self) -> None:
        """Stop the agent and the refresher; the replica actors keep running (see the module doc)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self._agent.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _ensure_refreshing(self) -> None:
        """Start the background refresh on first use, and wait for its first pass (so that replicas
        already on the cluster are adopted before anything is started or reported)."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(), name=f"ray-pool:{self.name}")
        await self._refreshed.wait()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self._refresh()
                self._error = None
            except (AgentError, KeyError) as exc:
                if self._error is None:
                    log.warning("pool %s: cannot reach the Ray cluster: %s", self.name, exc)
                self._error = str(exc)
            self._refreshed.set()
            self._publish()
            await asyncio.sleep(self._refresh_s)

    async def _refresh(self) -> None:
        raw_nodes = await self._agent.call("nodes")
        self._alive = frozenset(str(n["NodeID"]) for n in raw_nodes if n.get("Alive"))
        listed = {entry["name"]: entry for entry in await self._agent.call("replicas", pool=self.name)}
        for name, entry in listed.items():
            self._take(name, entry)
        for name, seen in list(self._seen.items()):
            if name not in listed and seen.listed and not seen.gone and name not in self._stopping:
                self._seen[name] = replace(seen, gone=True, gone_reason=ACTOR_VANISHED)
        await self._probe_all()

    def _take(self, name: str, entry: dict[str, Any]) -> None:
        """Fold one listed actor into what is known about its replica (adopting it if it is new)."""
        seen = self._seen.get(name)
        if entry["state"] == "alive":
            facts = ActorFacts.from_wire(entry["facts"])
            if seen is None:
                log.info("pool %s: adopting replica %s running on node %s", self.name, name, facts.node_id)
                seen = Observed(spec=facts.spec)
            same_process = seen.facts is not None and seen.facts.pid == facts.pid and facts.running
            readiness = seen.readiness if same_process else Readiness()
            self._seen[name] = replace(seen, facts=facts, readiness=readiness, listed=True)
        elif seen is not None and entry["state"] == "dead":
            reason = f"its Ray actor died: {entry.get('message', 'no reason given')}"
            self._seen[name] = replace(seen, listed=True, gone=True, gone_reason=reason)
        elif seen is not None:
            self._seen[name] = replace(seen, listed=True)

    async def _probe_all(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S))
        probes = {
            name: seen
            for name, seen in self._seen.items()
            if seen.facts is not None and seen.facts.running and seen.facts.url and not seen.gone
        }
        results = await asyncio.gather(
            *(self._probe(seen.spec.engine, seen.facts) for seen in probes.values())
        )
        for (name, seen), healthy in zip(probes.items(), results, strict=True):
            self._seen[name] = replace(seen, readiness=seen.readiness.observe(healthy))

    async def _probe(self, engine: str, facts: ActorFacts | None) -> bool:
        assert self._http is not None and facts is not None and facts.url
        try:
            async with self._http.get(facts.url + get_engine(engine).health_path) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _publish(self) -> None:
        """Recompute every replica's state from the facts; wake the reconciler if any changed."""
        states = {name: replica_state(self.name, seen, self._alive) for name, seen in self._seen.items()}
        for name in self._stopping & states.keys():
            states[name] = replace(states[name], phase=ReplicaPhase.STOPPING, url=None)
        if states == self._states:
            return
        for name, state in states.items():
            was = self._states.get(name)
            if was is None or was.phase != state.phase:
                log.info(
                    "pool %s: replica %s %s (%s)", self.name, name, state.phase.value, state.message or "ok"
                )
        self._states = states
        self._changed.set()
