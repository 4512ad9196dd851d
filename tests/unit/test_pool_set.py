"""Pool drivers follow the Pool resources: built, rebuilt on change, closed on delete, and a missing
driver package reported on the Pool instead of failing the control plane. Real store, real local pools."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from computenet.api import Pool, load_text
from computenet.control import Reconciler
from computenet.control.pool_set import DriverSettings, PoolSet
from computenet.gateway import EndpointRegistry
from computenet.pools import LocalPool
from computenet.store import ResourceStore, sqlite_url


def _pools(text: str) -> list[Pool]:
    pools = [r for r in load_text(text) if isinstance(r, Pool)]
    assert pools
    return pools


async def test_drivers_are_built_rebuilt_and_closed_with_their_pools(tmp_path: Path) -> None:
    pools = PoolSet(DriverSettings(tmp_path))
    try:
        await pools.sync(_pools("kind: Pool\nmetadata: {name: a}\nspec: {region: us}\n"))
        first = pools["a"]
        assert isinstance(first, LocalPool) and first.region == "us"
        await pools.sync(_pools("kind: Pool\nmetadata: {name: a}\nspec: {region: us}\n"))
        assert pools["a"] is first  # unchanged spec: the same driver, its replicas untouched
        await pools.sync(_pools("kind: Pool\nmetadata: {name: a}\nspec: {region: eu}\n"))
        assert pools["a"] is not first and pools["a"].region == "eu"
        await pools.sync([])
        assert list(pools) == []
    finally:
        await pools.close()


async def test_a_pool_whose_driver_is_not_installed_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "computenet.pools.ray", None)  # as if the `ray` extra were missing
    store = await ResourceStore.open(sqlite_url(tmp_path))
    pools = PoolSet(DriverSettings(tmp_path))
    try:
        await store.apply_all(
            load_text("""
kind: Pool
metadata: {name: here}
---
kind: Pool
metadata: {name: cluster}
spec: {type: ray, address: 127.0.0.1:6379, region: us-east}
""")
        )
        await Reconciler(store, pools, EndpointRegistry()).reconcile_once()
        assert list(pools) == ["here"]
        status = {p.name: p.status for p in await store.list("Pool") if isinstance(p, Pool)}
        cluster, here = status["cluster"], status["here"]
        assert cluster is not None and here is not None
        (ready,) = cluster.conditions
        assert (ready.status, ready.reason) == ("False", "DriverUnavailable")
        assert "pip install 'computenet[ray]'" in ready.message
        assert (here.nodes, here.ready_nodes, here.conditions[0].reason) == (1, 1, "Reachable")
    finally:
        await pools.close()
        await store.close()


async def test_a_pool_built_during_a_pass_wakes_the_next_one_when_its_replica_is_ready(
    tmp_path: Path,
) -> None:
    """A new leader's first pass builds every pool; their replicas turning ready must wake the
    reconciler at once, not after the resync period (an hour here)."""
    store = await ResourceStore.open(sqlite_url(tmp_path))
    pools = PoolSet(DriverSettings(tmp_path))
    registry = EndpointRegistry()
    task = asyncio.create_task(Reconciler(store, pools, registry, resync_s=3600).run())
    try:
        await store.apply_all(
            load_text("""
kind: Pool
metadata: {name: here}
---
kind: Model
metadata: {name: llm}
spec: {source: sim://llm}
---
kind: Deployment
metadata: {name: web}
spec: {model: llm, engine: sim}
""")
        )
        async with asyncio.timeout(30):
            while not ((published := registry.deployment("web")) and published.upstreams):
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pools.close()
        await store.close()
