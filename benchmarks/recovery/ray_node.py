"""Ray worker-node death, one run on a fresh cluster.

A real three-node Ray cluster on loopback addresses (head, 2 x H100, 4 x A10G; the tests' shortened
failure detection: 3 missed health checks 0.5 s apart), and in this process the reconciler, the Ray pool
and the gateway (`tests/e2e/ray/fleet.py`). The deployment spreads its two one-GPU `sim` replicas over
nodes, one on each GPU node. Under steady streaming traffic every process of the A10G node is killed with
SIGKILL, as a power loss would; the pool and the gateway are polled every `POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.ray.cluster import GPU_WORKERS, RayCluster
from e2e.ray.fleet import MODEL, Fleet, fleet_on
from prerequisites import NotInstalled

from computenet.pools import ReplicaPhase, ReplicaState

from . import one_line
from .traffic import Traffic

KILLED, LEFT = "a10g", "h100"  # of `GPU_WORKERS`: the node left has room for both replicas
POLL_S = 0.1
START_TIMEOUT_S = 120.0
RECOVERY_TIMEOUT_S = 120.0
SETTLE_S = 1.0  # traffic before the kill, and after recovery


@dataclass(frozen=True)
class RayRun:
    node_down_s: float  # the pool reports the killed node not ready
    replica_ready_s: float  # the replacement replica is Ready on the node left (a new process)
    routed_s: float  # and the gateway sends requests to it
    requests: int  # sent in the run, from before the kill to SETTLE_S after recovery
    failed: int  # answered with an error, or not at all, before their first byte
    broken: int  # cut after their first byte (streams of the killed replica: expected)


def runs(count: int, work: Path, interval_s: float) -> Iterator[RayRun | str]:
    """`count` runs, a fresh cluster each; a run that failed yields its error."""
    for index in range(1, count + 1):
        (work / f"ray-{index}").mkdir(parents=True)
        result: RayRun | str
        try:
            with _logs_to(work / f"ray-{index}" / "fleet.log"):
                result = asyncio.run(run(work / f"ray-{index}", interval_s))
        except NotInstalled:
            raise
        except (AssertionError, RuntimeError, TimeoutError) as exc:
            result = one_line(exc)
        yield result


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The in-process reconciler's and gateway's log (a failed attempt, a broken stream) in a file, off
    the table."""
    log, handler = logging.getLogger("computenet"), logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


async def run(work: Path, interval_s: float) -> RayRun:
    with RayCluster.started() as cluster:
        async with fleet_on(cluster, work) as fleet:
            nodes = await fleet.node_names()
            left, killed = nodes[GPU_WORKERS[LEFT][0]], nodes[GPU_WORKERS[KILLED][0]]
            before = await fleet.until_ready_on({left, killed}, START_TIMEOUT_S)
            moved = next(s for s in before.values() if s.node == killed)
            traffic, stop = Traffic(fleet.url, MODEL, interval_s), asyncio.Event()
            sending = asyncio.create_task(traffic.run(stop))
            try:
                await asyncio.sleep(SETTLE_S)
                killed_at = time.monotonic()
                await asyncio.to_thread(cluster.kill, KILLED)  # the traffic goes on meanwhile
                node_down_s, replica_ready_s, routed_s = await _watch(fleet, killed, left, moved, killed_at)
                await asyncio.sleep(SETTLE_S)
            finally:
                stop.set()
                await sending
    return RayRun(
        node_down_s=node_down_s,
        replica_ready_s=replica_ready_s,
        routed_s=routed_s,
        requests=len(traffic.requests),
        failed=traffic.count("failed"),
        broken=traffic.count("broken"),
    )


async def _watch(
    fleet: Fleet, killed: str, left: str, moved: ReplicaState, since: float
) -> tuple[float, float, float]:
    """Seconds from `since` until the node was seen down, the replacement ready, and routed to."""
    node_down = replica_ready = routed = None
    async with asyncio.timeout(RECOVERY_TIMEOUT_S):
        while node_down is None or replica_ready is None or routed is None:
            now = time.monotonic() - since  # when this round of polls began
            if node_down is None and not await fleet.node_ready(killed):
                node_down = now
            replacement = (await fleet.replicas()).get(moved.name)
            if replica_ready is None and _replaced(replacement, moved, left):
                replica_ready = now
            if routed is None and await fleet.ready_on({left}) is not None:
                routed = now
            await asyncio.sleep(POLL_S)
    return node_down, replica_ready, routed


def _replaced(state: ReplicaState | None, old: ReplicaState, node: str) -> bool:
    """`state` is a new process of `old`'s replica, ready on `node`."""
    if state is None or state.pid == old.pid:
        return False
    return state.phase == ReplicaPhase.READY and state.node == node
