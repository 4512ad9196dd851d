"""API keys in the store on a real SQLite file: hash only, revocation, expiry, wake-ups."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from computenet.api import KeyLimits, Model, ObjectMeta, hash_key, key_id_of
from computenet.api.models import ModelSpec
from computenet.store import NotFound, ResourceStore, sqlite_url
from computenet.store.tables import Base


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ResourceStore]:
    opened = await ResourceStore.open(database_url)
    yield opened
    await opened.close()


async def test_create_returns_the_text_once_and_stores_its_hash(store: ResourceStore) -> None:
    limits = KeyLimits(requests_per_minute=60, budget_usd=5.0, budget_period="day")
    key, text = await store.keys.create("acme", models=["llm", "embed"], limits=limits)
    assert key_id_of(text) == key.key_id and key.matches(text) and not key.matches(text + "x")
    assert key.secret_sha256 == hash_key(text)
    got = await store.keys.get(key.key_id)
    assert got == key
    assert (got.tenant, got.models, got.admin, got.revoked, got.expires_at) == (
        "acme",
        ("llm", "embed"),
        False,
        False,
        None,
    )
    assert got.limits == limits and got.created_at == pytest.approx(time.time(), abs=5)


async def test_the_key_text_is_nowhere_in_the_database(tmp_path: Path) -> None:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    _, text = await store.keys.create("acme")
    key_id = key_id_of(text)
    assert key_id is not None
    secret = text.split(f"{key_id}-", 1)[1]  # the whole secret: url-safe base64 may itself hold "-"
    assert len(secret) >= 32
    contents = _database_files(tmp_path)
    assert any(hash_key(text).encode() in data for data in contents)  # the files do hold the write
    for data in contents:
        assert text.encode() not in data and secret.encode() not in data
    with sqlite3.connect(tmp_path / "computenet.db") as db:
        assert db.execute("SELECT secret_sha256 FROM api_keys").fetchall() == [(hash_key(text),)]
    await store.close()


def _database_files(state_dir: Path) -> list[bytes]:
    """The database and its WAL file, which holds the latest writes until a checkpoint."""
    return [path.read_bytes() for path in state_dir.glob("computenet.db*")]


async def test_list_active_leaves_out_revoked_and_expired_keys(store: ResourceStore) -> None:
    now = time.time()
    live, _ = await store.keys.create("a")
    later, _ = await store.keys.create("b", expires_at=now + 3600)
    gone, _ = await store.keys.create("c", expires_at=now - 1)
    revoked, _ = await store.keys.create("d", admin=True)
    await store.keys.revoke(revoked.key_id)
    assert {k.key_id for k in await store.keys.list()} == {
        live.key_id,
        later.key_id,
        gone.key_id,
        revoked.key_id,
    }
    assert [k.key_id for k in await store.keys.list_active()] == [live.key_id, later.key_id]
    assert [k.key_id for k in await store.keys.list_active(now=now + 7200)] == [live.key_id]


async def test_revoke_is_kept_and_idempotent(store: ResourceStore) -> None:
    key, text = await store.keys.create("acme")
    first = await store.keys.revoke(key.key_id)
    again = await store.keys.revoke(key.key_id)
    assert first.revoked and again == first and first.matches(text)
    assert (await store.keys.get(key.key_id)).revoked


async def test_unknown_keys_are_not_found(store: ResourceStore) -> None:
    with pytest.raises(NotFound, match="ApiKey 'nope' not found"):
        await store.keys.get("nope")
    with pytest.raises(NotFound):
        await store.keys.revoke("nope")


async def test_key_changes_wake_key_watchers_only(store: ResourceStore) -> None:
    keys, resources = store.keys.watch(), store.watch()
    key, _ = await store.keys.create("acme")
    assert keys.is_set() and not resources.is_set()
    keys.clear()
    await store.keys.revoke(key.key_id)
    assert keys.is_set()
    keys.clear()
    await store.keys.revoke(key.key_id)  # already revoked: nothing changed
    assert not keys.is_set()
    await store.apply(Model(metadata=ObjectMeta(name="m"), spec=ModelSpec(source="sim://m")))
    assert resources.is_set() and not keys.is_set()


async def test_a_database_from_before_keys_gets_the_new_tables(tmp_path: Path) -> None:
    first = await ResourceStore.open(sqlite_url(tmp_path))
    await first.apply(Model(metadata=ObjectMeta(name="m"), spec=ModelSpec(source="sim://m")))
    await first.close()
    with sqlite3.connect(tmp_path / "computenet.db") as db:
        db.execute("DROP TABLE api_keys")
        db.execute("DROP TABLE usage")
    second = await ResourceStore.open(sqlite_url(tmp_path))
    try:
        key, _ = await second.keys.create("acme")
        assert [k.key_id for k in await second.keys.list()] == [key.key_id]
        assert [m.name for m in await second.list("Model")] == ["m"]
    finally:
        await second.close()


def test_tables_compile_for_postgresql() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    tables = Base.metadata.tables
    keys = str(CreateTable(tables["api_keys"]).compile(dialect=dialect))
    usage = str(CreateTable(tables["usage"]).compile(dialect=dialect))
    assert "models JSON" in keys and "admin BOOLEAN" in keys
    assert "day DATE" in usage and "PRIMARY KEY (request_id)" in usage
