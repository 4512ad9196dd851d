"""Two pools in two regions under one control plane, and a gateway that lives in one of them.

Real parts throughout: a SQLite store, a `PoolSet` that builds two `local` pools from the Pool
resources (one per region), real `sim` replica processes, the reconciler placing one replica in each
region (spread by region), and the gateway on a 127.0.0.1 port. The gateway sits in `us-east`: it
sends there first, spills to `eu-west` when its home replica is full (this gateway's in-flight count,
the spill threshold the deployment's policy sets) and when its home replica is dead.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from computenet.api import Pool, load_text
from computenet.control import Reconciler
from computenet.control.pool_set import DriverSettings, PoolSet
from computenet.gateway import Gateway, GatewayApp
from computenet.store import ResourceStore, sqlite_url

from .servers import serve

MANIFEST = """
kind: Pool
metadata: {name: us}
spec: {region: us-east, zone: us-east-1a}
---
kind: Pool
metadata: {name: eu}
spec: {region: eu-west, zone: eu-west-1a}
---
kind: Model
metadata: {name: llm}
spec: {source: sim://llm}
---
kind: Deployment
metadata: {name: web}
spec:
  model: llm
  engine: sim
  engineArgs: {time_scale: 0.5}
  placement: {spread: {key: region}}
  routing:
    policy: {preset: least-request, filters: [{name: region, maxInFlight: 4}]}
  roles: [{replicas: 2}]
"""


class Fleet:
    def __init__(self, store: ResourceStore, pools: PoolSet, url: str) -> None:
        self.store, self.pools, self.url = store, pools, url

    async def home_pid(self) -> int:
        (state,) = await self.pools["us"].replicas()
        assert state.pid is not None
        return state.pid


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    pools = PoolSet(DriverSettings(tmp_path))
    gateway = Gateway(region="us-east")
    reconciler = asyncio.create_task(Reconciler(store, pools, gateway.registry, resync_s=0.5).run())
    await gateway.start()
    try:
        await store.apply_all(load_text(MANIFEST))
        async with serve(GatewayApp(gateway)) as url:
            fleet = Fleet(store, pools, url)
            await _ready(gateway, 2)
            yield fleet
    finally:
        reconciler.cancel()
        await asyncio.gather(reconciler, return_exceptions=True)
        await pools.close()
        await gateway.close()
        await store.close()


async def _ready(gateway: Gateway, count: int) -> None:
    async with asyncio.timeout(30):
        while True:
            published = gateway.registry.deployment("web")
            if published is not None and len(published.upstreams) == count:
                return
            await asyncio.sleep(0.05)


async def _complete(client: httpx.AsyncClient, url: str, max_tokens: int = 4) -> str:
    body = {"model": "llm", "prompt": "hello", "max_tokens": max_tokens}
    resp = await client.post(f"{url}/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-computenet-replica"]


async def test_each_region_gets_a_replica_and_pools_report_their_region(fleet: Fleet) -> None:
    placed = {pool: [s.name for s in await fleet.pools[pool].replicas()] for pool in ("us", "eu")}
    assert sorted(len(names) for names in placed.values()) == [1, 1]
    pools = {p.name: p for p in await fleet.store.list("Pool") if isinstance(p, Pool)}
    async with asyncio.timeout(10):
        while not all((p.status and p.status.nodes == 1) for p in pools.values()):
            await asyncio.sleep(0.1)
            pools = {p.name: p for p in await fleet.store.list("Pool") if isinstance(p, Pool)}


async def test_the_gateway_stays_home_then_spills_when_home_is_full(fleet: Fleet) -> None:
    (home,) = [s.name for s in await fleet.pools["us"].replicas()]
    async with httpx.AsyncClient(timeout=30) as client:
        alone = Counter([await _complete(client, fleet.url) for _ in range(6)])
        assert alone == {home: 6}
        # Six long requests at once: home takes four (maxInFlight), the other two go abroad (without
        # the region filter, least-request would split them three and three).
        busy = Counter(await asyncio.gather(*(_complete(client, fleet.url, 200) for _ in range(6))))
        assert busy[home] == 4 and sum(busy.values()) == 6


async def test_the_gateway_spills_when_home_dies_and_no_request_fails(fleet: Fleet) -> None:
    os.kill(await fleet.home_pid(), signal.SIGKILL)
    async with httpx.AsyncClient(timeout=30) as client:
        answered = Counter([await _complete(client, fleet.url) for _ in range(10)])
    (away,) = [s.name for s in await fleet.pools["eu"].replicas()]
    assert answered[away] >= 1 and sum(answered.values()) == 10
