"""The reconciler against a real store, a real local pool and real `sim` processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from computenet.api import Deployment, load_text
from computenet.control import Reconciler
from computenet.gateway import EndpointRegistry
from computenet.pools import LocalPool
from computenet.store import ResourceStore, sqlite_url

MANIFEST = """
kind: Model
metadata: {{name: llm}}
spec: {{source: sim://llm}}
---
kind: Deployment
metadata: {{name: web}}
spec: {{model: {model}, engine: sim, roles: [{{replicas: {replicas}}}]}}
"""


class Harness:
    def __init__(self, store: ResourceStore, pool: LocalPool, registry: EndpointRegistry) -> None:
        self.store, self.pool, self.registry = store, pool, registry

    async def apply(self, replicas: int, model: str = "llm") -> None:
        await self.store.apply_all(load_text(MANIFEST.format(replicas=replicas, model=model)))

    async def until(self, check: Callable[[], bool], timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                await asyncio.sleep(0.05)

    async def deployment(self) -> Deployment:
        dep = await self.store.get("Deployment", "web")
        assert isinstance(dep, Deployment)
        return dep

    def endpoints(self) -> int:
        names = self.registry.deployments_of("llm")
        if not names:
            return -1
        published = self.registry.deployment(names[0])
        return -1 if published is None else len(published.upstreams)


@asynccontextmanager
async def reconciling(tmp_path: Path, *, kv_events: bool = False) -> AsyncIterator[Harness]:
    """A store, a local pool and a reconciler publishing to a registry; all stopped on exit."""
    store = await ResourceStore.open(sqlite_url(tmp_path))
    pool = LocalPool(state_dir=tmp_path, kv_events=kv_events)
    registry = EndpointRegistry()
    task = asyncio.create_task(Reconciler(store, {"local": pool}, registry, resync_s=0.5).run())
    try:
        yield Harness(store, pool, registry)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
        await store.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with reconciling(tmp_path) as running:
        yield running


async def test_replicas_start_become_endpoints_and_scale_to_zero(harness: Harness) -> None:
    await harness.apply(replicas=2)
    await harness.until(lambda: harness.endpoints() == 2)
    dep = await harness.deployment()
    assert dep.status is not None and dep.status.ready_replicas == 2
    await harness.apply(replicas=0)
    await harness.until(lambda: harness.endpoints() == 0)
    assert await harness.pool.replicas() == []
    dep = await harness.deployment()
    assert dep.status is not None
    assert {c.type: c.reason for c in dep.status.conditions}["Available"] == "ScaledToZero"


async def test_missing_model_is_reported_and_nothing_starts(harness: Harness) -> None:
    await harness.apply(replicas=1, model="not-there")

    async def reason() -> str | None:
        status = (await harness.deployment()).status
        return next((c.reason for c in status.conditions if c.type == "Ready"), None) if status else None

    async with asyncio.timeout(10):
        while await reason() != "ModelNotFound":
            await asyncio.sleep(0.05)
    assert await harness.pool.replicas() == []


async def test_deleting_a_deployment_stops_its_replicas_and_withdraws_the_model(harness: Harness) -> None:
    await harness.apply(replicas=1)
    await harness.until(lambda: harness.endpoints() == 1)
    await harness.store.delete("Deployment", "web")
    await harness.until(lambda: harness.endpoints() == -1)
    assert await harness.pool.replicas() == []
