"""A worker node of a Ray pool dies under traffic: its replicas are placed again on the node that is left,
and no request through the gateway fails before its first byte.

Real parts throughout: a SQLite store, the pool set building a `RayPool` from the Pool resource, the
reconciler with the GPU scheduler, `sim` engines in detached actors on a real three-node Ray cluster
(head, 2 x H100, 4 x A10G, on loopback addresses), and the gateway on a 127.0.0.1 port. The deployment
spreads its two one-GPU replicas over nodes (`spread: {key: node}`), so one lands on each GPU node (the
GPU-less head does not count as a domain for GPU replicas); killing the A10G node (every process of it,
as a power loss would) leaves the H100 node, which has room for both, and the spread, counting only
live nodes, lets the replacement join its sibling there.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from unit.servers import serve  # tests/ is on sys.path: e2e and unit are its packages

from computenet.api import load_text
from computenet.control import Reconciler
from computenet.control.pool_set import DriverSettings, PoolSet
from computenet.gateway import Gateway, GatewayApp
from computenet.pools import ReplicaPhase, ReplicaState
from computenet.store import ResourceStore, sqlite_url

from .cluster import RayCluster, stop_replicas

pytestmark = pytest.mark.e2e

MANIFEST = """
kind: Pool
metadata: {{name: ray}}
spec: {{type: ray, address: "{address}", region: us-east, zone: us-east-1a}}
---
kind: Model
metadata: {{name: llm}}
spec: {{source: sim://llm}}
---
kind: Deployment
metadata: {{name: web}}
spec:
  model: llm
  engine: sim
  placement: {{spread: {{key: node}}}}
  roles: [{{replicas: 2, resources: {{gpus: 1}}}}]
"""


@dataclass
class Fleet:
    pools: PoolSet
    gateway: Gateway
    url: str

    async def replicas(self) -> dict[str, ReplicaState]:
        return {s.name: s for s in await self.pools["ray"].replicas()}

    def published(self) -> set[str]:
        """The URLs the gateway sends requests for `llm` to."""
        web = self.gateway.registry.deployment("web")
        return {u.origin.url for u in web.upstreams} if web is not None else set()

    async def until_ready_on(self, nodes: set[str], timeout_s: float = 60) -> dict[str, ReplicaState]:
        """Wait until both replicas are ready on exactly `nodes` and the gateway sends to both (the
        reconciler publishes a replica in the pass after its pool reports it ready)."""
        async with asyncio.timeout(timeout_s):
            while True:
                states = await self.replicas()
                ready = {s.url: s.node for s in states.values() if s.phase == ReplicaPhase.READY}
                if len(ready) == 2 and set(ready.values()) == nodes and self.published() == set(ready):
                    return states
                await asyncio.sleep(0.1)


@pytest.fixture
async def fleet(ray_cluster: RayCluster, tmp_path: Path) -> AsyncIterator[Fleet]:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    pools = PoolSet(DriverSettings(tmp_path))
    gateway = Gateway()
    reconciler = asyncio.create_task(Reconciler(store, pools, gateway.registry, resync_s=0.5).run())
    await gateway.start()
    try:
        await store.apply_all(load_text(MANIFEST.format(address=ray_cluster.address)))
        async with asyncio.timeout(30):
            while "ray" not in pools:  # the reconciler's first pass builds the pool's driver
                await asyncio.sleep(0.05)
        async with serve(GatewayApp(gateway)) as url:
            yield Fleet(pools, gateway, url)
    finally:
        reconciler.cancel()
        await asyncio.gather(reconciler, return_exceptions=True)
        if "ray" in pools:
            await stop_replicas(pools["ray"])  # closing a Ray pool leaves its replicas running
        await pools.close()
        await gateway.close()
        await store.close()


@dataclass
class Traffic:
    """Streamed completions sent back to back by a few clients, and how each one ended."""

    url: str
    served_by: Counter[str] = field(default_factory=Counter)
    failed_before_first_byte: list[str] = field(default_factory=list)
    broken_after_first_byte: int = 0  # a stream cut when its replica's node died: allowed

    async def run(self, stop: asyncio.Event, clients: int = 3) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._client(client, stop) for _ in range(clients)))

    async def _client(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        body = {"model": "llm", "prompt": "hello", "max_tokens": 16, "stream": True}
        while not stop.is_set():
            first_byte = False
            try:
                async with client.stream("POST", f"{self.url}/v1/completions", json=body) as resp:
                    if resp.status_code != 200:
                        self.failed_before_first_byte.append(
                            f"{resp.status_code}: {(await resp.aread())[:200]!r}"
                        )
                        continue
                    async for _ in resp.aiter_bytes():
                        first_byte = True
                    self.served_by[resp.headers["x-computenet-replica"]] += 1
            except httpx.HTTPError as exc:
                if first_byte:
                    self.broken_after_first_byte += 1
                else:
                    self.failed_before_first_byte.append(repr(exc))


async def test_a_dead_node_s_replicas_move_to_the_node_left_and_traffic_goes_on(
    fleet: Fleet, ray_cluster: RayCluster
) -> None:
    nodes = {n.address: n.name for n in await fleet.pools["ray"].nodes()}
    h100, a10g = nodes["127.0.0.3"], nodes["127.0.0.4"]
    before = await fleet.until_ready_on({h100, a10g})  # least allocated: one on each GPU node
    moved = next(name for name, s in before.items() if s.node == a10g)

    traffic, stop = Traffic(fleet.url), asyncio.Event()
    sending = asyncio.create_task(traffic.run(stop))
    try:
        await asyncio.sleep(1)  # traffic flows to both replicas
        ray_cluster.kill("a10g")
        after = await fleet.until_ready_on({h100})
        served_before_move = sum(traffic.served_by.values())
        await asyncio.sleep(1)  # and keeps flowing, to both replicas on the H100 node
    finally:
        stop.set()
        await sending

    assert traffic.failed_before_first_byte == [], traffic.failed_before_first_byte
    assert after[moved].pid != before[moved].pid  # started again, not the same process reported
    assert sum(traffic.served_by.values()) > served_before_move
    assert set(traffic.served_by) == {"web-server-0", "web-server-1"}
