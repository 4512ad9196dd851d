"""A Ray pool behind the reconciler and the gateway, all in this process, for a deployment that spreads
its two one-GPU replicas over the nodes of a `RayCluster`.

Real parts throughout: a SQLite store, the pool set building a `RayPool` from the Pool resource, the
reconciler with the GPU scheduler, `sim` engines in detached actors on the cluster, and the gateway on a
127.0.0.1 port. No pytest here: `tests/e2e/ray/test_failover.py` and `benchmarks/failover.py` both run it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from unit.servers import serve  # tests/ is on sys.path: e2e and unit are its packages

from computenet.api import load_text
from computenet.control import Reconciler
from computenet.control.pool_set import DriverSettings, PoolSet
from computenet.gateway import Gateway, GatewayApp
from computenet.pools import ReplicaPhase, ReplicaState
from computenet.store import ResourceStore, sqlite_url

from .cluster import RayCluster, stop_replicas

MODEL, DEPLOYMENT, POOL = "llm", "web", "ray"
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
    url: str  # the gateway's

    async def replicas(self) -> dict[str, ReplicaState]:
        return {s.name: s for s in await self.pools[POOL].replicas()}

    async def node_names(self) -> dict[str, str]:
        """Ray's node name of each node, by the node's address."""
        return {n.address: n.name for n in await self.pools[POOL].nodes()}

    async def node_ready(self, name: str) -> bool:
        return any(n.ready for n in await self.pools[POOL].nodes() if n.name == name)

    def published(self) -> set[str]:
        """The URLs the gateway sends requests for `llm` to."""
        web = self.gateway.registry.deployment(DEPLOYMENT)
        return {u.origin.url for u in web.upstreams} if web is not None else set()

    async def ready_on(self, nodes: set[str]) -> dict[str, ReplicaState] | None:
        """The replicas if both are ready on exactly `nodes` and the gateway sends to both (the reconciler
        publishes a replica in the pass after its pool reports it ready), else None."""
        states = await self.replicas()
        ready = {s.url: s.node for s in states.values() if s.phase == ReplicaPhase.READY}
        if len(ready) == 2 and set(ready.values()) == nodes and self.published() == set(ready):
            return states
        return None

    async def until_ready_on(self, nodes: set[str], timeout_s: float = 60) -> dict[str, ReplicaState]:
        async with asyncio.timeout(timeout_s):
            while (states := await self.ready_on(nodes)) is None:
                await asyncio.sleep(0.1)
            return states


@contextlib.asynccontextmanager
async def fleet_on(cluster: RayCluster, work: Path) -> AsyncIterator[Fleet]:
    """The fleet with the manifest applied and the pool's driver built; its replicas stopped after."""
    store = await ResourceStore.open(sqlite_url(work))
    pools = PoolSet(DriverSettings(work))
    gateway = Gateway()
    reconciler = asyncio.create_task(Reconciler(store, pools, gateway.registry, resync_s=0.5).run())
    await gateway.start()
    try:
        await store.apply_all(load_text(MANIFEST.format(address=cluster.address)))
        async with asyncio.timeout(30):
            while POOL not in pools:  # the reconciler's first pass builds the pool's driver
                await asyncio.sleep(0.05)
        async with serve(GatewayApp(gateway)) as url:
            yield Fleet(pools, gateway, url)
    finally:
        reconciler.cancel()
        await asyncio.gather(reconciler, return_exceptions=True)
        if POOL in pools:
            await stop_replicas(pools[POOL])  # closing a Ray pool leaves its replicas running
        await pools.close()
        await gateway.close()
        await store.close()
