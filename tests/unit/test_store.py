"""The store on a real SQLite file: round trips, versions, conflicts, schema records."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computenet.api import Deployment, DeploymentStatus, Model, ObjectMeta, load_text
from computenet.api.models import ModelSpec
from computenet.store import Conflict, NotFound, ResourceStore, SchemaTooNew, sqlite_url
from computenet.store.tables import SCHEMA_VERSION


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ResourceStore]:
    opened = await ResourceStore.open(database_url)
    yield opened
    await opened.close()


def _deployment(replicas: int = 1, **meta: object) -> Deployment:
    (dep,) = load_text(
        f"kind: Deployment\nmetadata: {{name: web}}\nspec: {{model: m, engine: sim, roles: [{{replicas: {replicas}}}]}}"
    )
    assert isinstance(dep, Deployment)
    return dep.model_copy(update={"metadata": dep.metadata.model_copy(update=meta)})


async def test_round_trip_create_get_list_delete(store: ResourceStore) -> None:
    created, action = await store.apply(_deployment(3))
    assert action == "created"
    assert created.metadata.resource_version == 1 and created.metadata.generation == 1
    got = await store.get("Deployment", "web")
    assert isinstance(got, Deployment) and got.spec == _deployment(3).spec
    assert got.metadata.creation_timestamp is not None and got.metadata.creation_timestamp.tzinfo is not None
    assert [r.name for r in await store.list("Deployment")] == ["web"]
    assert await store.list("Model") == []
    await store.delete("Deployment", "web")
    with pytest.raises(NotFound):
        await store.get("Deployment", "web")


async def test_reapplying_the_same_spec_changes_nothing(store: ResourceStore) -> None:
    await store.apply(_deployment(1))
    again, action = await store.apply(_deployment(1))
    assert action == "unchanged" and again.metadata.resource_version == 1


async def test_spec_change_bumps_generation_and_version(store: ResourceStore) -> None:
    await store.apply(_deployment(1))
    changed, action = await store.apply(_deployment(2))
    assert action == "configured"
    assert (changed.metadata.generation, changed.metadata.resource_version) == (2, 2)


async def test_stale_update_is_rejected(store: ResourceStore) -> None:
    await store.apply(_deployment(1))
    await store.apply(_deployment(2, resource_version=1))  # based on the current version: fine
    with pytest.raises(Conflict, match="resourceVersion is 2"):
        await store.apply(_deployment(5, resource_version=1))
    assert (await store.get("Deployment", "web")).spec.roles[0].replicas == 2  # type: ignore[union-attr]


async def test_status_and_spec_are_written_apart(store: ResourceStore) -> None:
    await store.apply(_deployment(1))
    await store.update_status("Deployment", "web", DeploymentStatus(ready_replicas=1, replicas=1))
    after_spec, _ = await store.apply(_deployment(4))
    assert isinstance(after_spec, Deployment)
    assert after_spec.status is not None and after_spec.status.ready_replicas == 1
    assert after_spec.spec.roles[0].replicas == 4
    assert after_spec.metadata.generation == 2  # a status write is not a new generation


async def test_a_status_carried_in_an_apply_is_ignored(store: ResourceStore) -> None:
    dep = _deployment(1).model_copy(update={"status": DeploymentStatus(ready_replicas=9)})
    stored, _ = await store.apply(dep)
    assert stored.status is None


async def test_apply_all_is_all_or_nothing(store: ResourceStore) -> None:
    await store.apply(_deployment(1))
    model = Model(metadata=ObjectMeta(name="m"), spec=ModelSpec(source="sim://m"))
    with pytest.raises(Conflict):
        await store.apply_all([model, _deployment(2, resource_version=7)])
    assert await store.list("Model") == []


async def test_writes_wake_watchers(store: ResourceStore) -> None:
    event = store.watch()
    await store.apply(_deployment(1))
    assert event.is_set()
    event.clear()
    await store.apply(_deployment(1))  # unchanged: nothing to react to
    assert not event.is_set()


async def test_sqlite_is_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    await store.apply(_deployment(1))
    await store.close()
    with sqlite3.connect(tmp_path / "computenet.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM computenet_schema").fetchone()[0] == SCHEMA_VERSION


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    await store.close()
    with sqlite3.connect(tmp_path / "computenet.db") as db:
        db.execute("UPDATE computenet_schema SET version = 99")
    with pytest.raises(SchemaTooNew, match="upgrade ComputeNet"):
        await ResourceStore.open(sqlite_url(tmp_path))


async def test_data_survives_a_restart(tmp_path: Path) -> None:
    first = await ResourceStore.open(sqlite_url(tmp_path))
    await first.apply(_deployment(2))
    await first.close()
    second = await ResourceStore.open(sqlite_url(tmp_path))
    try:
        assert (await second.get("Deployment", "web")).spec.roles[0].replicas == 2  # type: ignore[union-attr]
    finally:
        await second.close()
