"""One database, several store processes (two control-plane replicas): each sees the other's changes,
concurrent writers neither lose nor clash, and published endpoints carry a revision to wait on.

Two `ResourceStore`s on one database stand in for two processes: they share no memory, only the
database. Every test runs on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computenet.api import Deployment, DeploymentStatus, Endpoint, Model, ObjectMeta, PolicySpec, load_text
from computenet.api.models import ModelSpec
from computenet.store import Conflict, ResourceStore, sqlite_url
from computenet.store.tables import SCHEMA_VERSION

POLL_S = 0.05


@pytest.fixture
async def pair(database_url: str) -> AsyncIterator[tuple[ResourceStore, ResourceStore]]:
    first, second = await asyncio.gather(ResourceStore.open(database_url), ResourceStore.open(database_url))
    yield first, second
    await first.close()
    await second.close()


def _model(name: str, source: str = "sim://m") -> Model:
    return Model(metadata=ObjectMeta(name=name), spec=ModelSpec(source=source))


def _deployment(replicas: int) -> Deployment:
    (dep,) = load_text(
        f"kind: Deployment\nmetadata: {{name: web}}\nspec: {{model: m, engine: sim, roles: [{{replicas: {replicas}}}]}}"
    )
    assert isinstance(dep, Deployment)
    return dep


async def _woken(event: asyncio.Event, timeout_s: float = 2.0) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


async def test_a_write_in_one_process_wakes_the_watchers_of_another(
    pair: tuple[ResourceStore, ResourceStore],
) -> None:
    writer, reader = pair
    resources, keys, endpoints = reader.watch(), reader.keys.watch(), reader.endpoints.watchers.watch()
    poll = asyncio.create_task(reader.poll_changes(POLL_S))
    try:
        await asyncio.sleep(3 * POLL_S)  # the poll's first read is its baseline
        await writer.apply(_deployment(1))
        assert await _woken(resources) and not keys.is_set() and not endpoints.is_set()
        resources.clear()
        await writer.update_status("Deployment", "web", DeploymentStatus(replicas=1))
        assert not await _woken(resources, 5 * POLL_S)  # status is the reconciler's own write: no wake-up
        await writer.keys.create("acme")
        assert await _woken(keys) and not resources.is_set()
        await writer.endpoints.publish("web", [], model="m", policy="random")
        assert await _woken(endpoints)
    finally:
        poll.cancel()
        await asyncio.wait([poll])


async def test_a_stale_update_is_refused_across_processes(pair: tuple[ResourceStore, ResourceStore]) -> None:
    first, second = pair
    await first.apply(_deployment(1))
    read = await second.get("Deployment", "web")
    await first.apply(_deployment(2))
    stale = _deployment(5)
    stale.metadata.resource_version = read.metadata.resource_version
    with pytest.raises(Conflict):
        await second.apply(stale)
    assert (await second.get("Deployment", "web")).spec.roles[0].replicas == 2  # type: ignore[union-attr]


async def test_concurrent_writers_lose_nothing(pair: tuple[ResourceStore, ResourceStore]) -> None:
    first, second = pair
    await first.apply(_deployment(1))
    status = DeploymentStatus(replicas=1, ready_replicas=1)
    # A spec change through one replica's API while the leader writes status through the other.
    await asyncio.gather(first.apply(_deployment(3)), second.update_status("Deployment", "web", status))
    dep = await first.get("Deployment", "web")
    assert isinstance(dep, Deployment) and dep.spec.roles[0].replicas == 3
    assert dep.status is not None and dep.status.ready_replicas == 1
    assert dep.metadata.resource_version == 3  # two writes after the create, neither lost


async def test_two_processes_creating_one_name_at_once_both_succeed(
    pair: tuple[ResourceStore, ResourceStore],
) -> None:
    second = pair[1]
    results = await asyncio.gather(*(s.apply(_model("m", f"sim://{i}")) for i, s in enumerate(pair)))
    # One created it; the other, finding it there, updated it (last writer wins, as kubectl apply).
    assert sorted(action for _, action in results) == ["configured", "created"]
    assert len(await second.list("Model")) == 1


async def test_two_applies_listing_the_same_objects_in_opposite_orders_both_land(
    pair: tuple[ResourceStore, ResourceStore],
) -> None:
    first, second = pair
    models = [_model(f"m{i}") for i in range(8)]
    await first.apply_all(models)
    for round_ in range(5):  # each round: two processes update all eight, one reversed
        forward = [_model(m.name, f"sim://a{round_}") for m in models]
        backward = [_model(m.name, f"sim://b{round_}") for m in reversed(models)]
        results = await asyncio.gather(first.apply_all(forward), second.apply_all(backward))
        assert [r.name for r, _ in results[1]] == [m.name for m in reversed(models)]  # input order kept
    sources = {m.spec.source for m in await second.list("Model") if isinstance(m, Model)}
    assert len(sources) == 1  # one whole apply won: no object from one and the rest from the other


async def test_published_endpoints_carry_a_revision_that_moves_only_on_change(
    pair: tuple[ResourceStore, ResourceStore],
) -> None:
    leader, api = pair
    start = (await api.endpoints.snapshot()).revision
    replica = Endpoint(
        replica="web-0", deployment="web", model="m", url="http://10.0.0.5:8000", kv_events=None
    )
    policy = PolicySpec.model_validate({"preset": "prefix", "scorers": [{"name": "queue", "weight": 2}]})
    await leader.endpoints.publish("web", [replica], model="m", policy=policy)
    await leader.endpoints.publish("web", [replica], model="m", policy=policy)  # the same again
    await leader.endpoints.publish("old", [], model="m", policy="random")
    snapshot = await api.endpoints.snapshot()
    assert snapshot.revision == start + 2
    assert [(p.deployment, p.endpoints, p.policy) for p in snapshot.deployments] == [
        ("old", (), "random"),
        ("web", (replica,), policy),
    ]
    await leader.endpoints.retain({"web", "gone"})  # what a new leader does first
    await leader.endpoints.withdraw("nothing-there")
    snapshot = await api.endpoints.snapshot()
    assert [p.deployment for p in snapshot.deployments] == ["web"] and snapshot.revision == start + 3


async def test_replicas_starting_together_on_an_empty_database_both_open_it(database_url: str) -> None:
    stores = await asyncio.gather(*(ResourceStore.open(database_url) for _ in range(4)))
    try:
        await stores[0].apply(_model("m"))
        assert [m.name for m in await stores[3].list("Model")] == ["m"]
    finally:
        for store in stores:
            await store.close()


async def test_a_version_1_database_is_upgraded_and_then_refused_to_version_1_code(tmp_path: Path) -> None:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    await store.apply(_model("m"))
    await store.close()
    with sqlite3.connect(tmp_path / "computenet.db") as db:  # as version 1 left it
        for table in ("leases", "endpoints", "revisions"):
            db.execute(f"DROP TABLE {table}")
        db.execute("UPDATE computenet_schema SET version = 1")
    store = await ResourceStore.open(sqlite_url(tmp_path))
    try:
        assert [m.name for m in await store.list("Model")] == ["m"]
        assert await store.leases.create("l", "a", 5.0)
        await store.apply(_model("n"))  # the revisions rows were seeded: writes count
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "computenet.db") as db:
        assert db.execute("SELECT version FROM computenet_schema").fetchone()[0] == SCHEMA_VERSION == 2
        assert db.execute("SELECT revision FROM revisions WHERE topic = 'resources'").fetchone()[0] == 1
