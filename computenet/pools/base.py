"""The `PoolDriver` seam: start, stop and watch replicas in one place that runs them.

A driver keeps each replica it was asked for running, restarting it with backoff
when it dies, much as a kubelet keeps a pod's containers running; which replicas
should exist at all is the reconciler's decision. Drivers report facts (phase,
address, restarts, last exit code), never conclusions about deployments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from computenet.api import NodeInfo
from computenet.engines.base import ArgValue


@dataclass(frozen=True)
class ReplicaSpec:
    """What one replica runs. `template_hash` changes when anything here that matters changes."""

    name: str
    deployment: str
    role: str
    engine: str
    served_name: str
    source: str
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    gpus: int = 0
    gpu_type: str | None = None
    cpu: float | None = None  # cores to reserve (Kubernetes requests, Ray num_cpus); None: the pool's default
    memory_gb: float | None = None
    nodes: int = 1  # nodes one replica spans (multi-node tensor parallelism); `gpus` is the total over them
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    template_hash: str = ""
    # Where the scheduler put this replica: a node of the pool and GPU indices on it. Not part of the
    # template: moving a replica is a placement decision, not a new version.
    node: str = ""
    gpu_ids: tuple[int, ...] = ()


class ReplicaPhase(StrEnum):
    STARTING = "Starting"  # process started, health probe not yet passing
    READY = "Ready"  # health probe passing: may take traffic
    BACKOFF = "BackOff"  # exited; waiting before the next restart
    STOPPING = "Stopping"
    LOST = "Lost"  # its node is gone; the pool cannot restart it there, the reconciler places it anew


@dataclass(frozen=True)
class ReplicaState:
    spec: ReplicaSpec
    pool: str
    phase: ReplicaPhase
    node: str = ""  # the node it runs on, as the pool names it
    url: str | None = None
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    started_at: float | None = None  # unix time of the current process's start
    message: str = ""
    kv_events: str | None = None  # where the current process publishes KV-cache events, if it does
    kv_events_replay: str | None = None  # and where it replays the batches a subscriber missed

    @property
    def name(self) -> str:
        return self.spec.name


class PoolDriver(Protocol):
    name: str
    region: str
    zone: str

    async def nodes(self) -> list[NodeInfo]:
        """The pool's nodes as they are now (ready or not), for the scheduler and `get pools`."""
        ...

    async def start(self, spec: ReplicaSpec) -> None:
        """Begin running a replica; returns at once, readiness shows up in `replicas()`."""

    async def stop(self, name: str) -> None:
        """Stop a replica and wait until its processes are gone."""

    async def replicas(self) -> list[ReplicaState]:
        """The current facts about every replica this driver runs."""
        ...

    async def logs(self, name: str, *, tail_lines: int | None = None) -> str:
        """What the replica wrote to stdout and stderr."""
        ...

    def watch(self) -> asyncio.Event:
        """An event set whenever a replica's state changes; the reconciler clears it."""
        ...

    async def close(self) -> None:
        """Let go of the pool: watches, connections, helper processes.

        What happens to replicas depends on where they run. A `local` pool's replicas are this
        process's children and stop with it. A remote pool's replicas (Ray actors, Kubernetes objects)
        keep running, so that a restarted or failed-over control plane adopts them without a gap in
        service; `stop` each one to remove it (the pool set does when a Pool is deleted).
        """
