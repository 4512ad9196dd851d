"""Persistence of resources: apply (create or update), get, list, delete, status writes.

One `ResourceStore` per process, opened from a SQLAlchemy URL. SQLite runs in WAL
mode so that readers (the control API) never wait on the reconciler's status writes.
Every write wakes the watchers, so the reconciler reacts at once instead of polling.
API keys (`store.keys`) and usage records (`store.usage`) share the engine; key
changes wake their own watchers, so the reconciler does not wake for them.

On PostgreSQL several processes share the store (control-plane replicas, each serving
the control API): a write locks the row it read (`SELECT ... FOR UPDATE`), so two
writers of one object queue instead of one losing the other's change and the
resourceVersion check holds across processes; `poll_changes` wakes this process's
watchers for other processes' writes (see `changes.py`); leases (`store.leases`) elect
the one replica that reconciles, and published endpoints (`store.endpoints`) are what
gateway replicas follow.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel
from sqlalchemy import event, select
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from computenet.api import KINDS, AnyResource

from .changes import Watchers, bump, poll_revisions, seed
from .endpoints import EndpointStore
from .errors import Conflict, NotFound, SchemaTooNew
from .keys import KeyStore
from .leases import LeaseStore
from .tables import SCHEMA_VERSION, Base, ResourceRow, SchemaRow
from .transactions import lock_for_migration, lock_for_write
from .usage import UsageStore

TOPIC = "resources"

ApplyAction = Literal["created", "configured", "unchanged"]

_SQLITE_BUSY_TIMEOUT_S = 5.0


def sqlite_url(state_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{state_dir / 'computenet.db'}"


class ResourceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._watchers = Watchers()
        self.keys = KeyStore(self._sessions)
        self.usage = UsageStore(self._sessions, engine.dialect.name)
        self.leases = LeaseStore(self._sessions, engine.dialect.name)
        self.endpoints = EndpointStore(self._sessions)

    @classmethod
    async def open(cls, url: str) -> ResourceStore:
        """Connect, create the schema on first start, refuse a schema newer than this code."""
        engine = create_async_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        try:
            await store._migrate()
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    def watch(self) -> asyncio.Event:
        """An event set after every resource write; clear it after waking up. Keys: `keys.watch()`."""
        return self._watchers.watch()

    async def poll_changes(self, interval_s: float = 1.0) -> None:
        """Wake this process's watchers when another process changes the store; runs until cancelled.

        Only needed where several processes share one database (the distributed control plane).
        """
        topics = {TOPIC: self._watchers, "keys": self.keys.watchers, "endpoints": self.endpoints.watchers}
        await poll_revisions(self._sessions, topics, interval_s)

    async def apply(self, resource: AnyResource) -> tuple[AnyResource, ApplyAction]:
        (result,) = await self.apply_all([resource])
        return result

    async def apply_all(self, resources: Iterable[AnyResource]) -> list[tuple[AnyResource, ApplyAction]]:
        """Create or update each resource's spec, all in one transaction (all or nothing)."""
        items = list(resources)
        try:
            results = await self._apply_all(items)
        except IntegrityError:
            # Another process created one of these names between our read and our insert: read
            # again, and this time it is an update (or a Conflict, if a version was given).
            results = await self._apply_all(items)
        if any(action != "unchanged" for _, action in results):
            self._notify()
        return [(_to_resource(row), action) for row, action in results]

    async def _apply_all(self, resources: list[AnyResource]) -> list[tuple[ResourceRow, ApplyAction]]:
        # Rows are locked in one order, (kind, name), whatever the file's order: two applies of the
        # same objects listed differently then queue behind each other instead of deadlocking.
        order = sorted(range(len(resources)), key=lambda i: (resources[i].kind, resources[i].name))
        results: dict[int, tuple[ResourceRow, ApplyAction]] = {}
        async with self._sessions.begin() as session:
            await lock_for_write(session)
            for i in order:
                results[i] = await _upsert(session, resources[i])
            if any(action != "unchanged" for _, action in results.values()):
                await bump(session, TOPIC)
        return [results[i] for i in range(len(resources))]

    async def get(self, kind: str, name: str) -> AnyResource:
        async with self._sessions() as session:
            row = await session.get(ResourceRow, (kind, name))
            if row is None:
                raise NotFound(kind, name)
            return _to_resource(row)

    async def list(self, kind: str) -> list[AnyResource]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ResourceRow).where(ResourceRow.kind == kind).order_by(ResourceRow.name)
            )
            return [_to_resource(row) for row in rows]

    async def delete(self, kind: str, name: str) -> AnyResource:
        async with self._sessions.begin() as session:
            await lock_for_write(session)
            row = await session.get(ResourceRow, (kind, name), with_for_update=True)
            if row is None:
                raise NotFound(kind, name)
            await session.delete(row)
            await bump(session, TOPIC)
        self._notify()
        return _to_resource(row)

    async def update_status(
        self, kind: str, name: str, status: BaseModel, *, resource_version: int | None = None
    ) -> AnyResource:
        """Replace the status only. Unchanged status is not written (no version churn)."""
        data = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        async with self._sessions.begin() as session:
            await lock_for_write(session)
            row = await session.get(ResourceRow, (kind, name), with_for_update=True)
            if row is None:
                raise NotFound(kind, name)
            _check_version(row, resource_version)
            if row.status != data:
                row.status = data
                row.resource_version += 1
                row.updated_at = _now()
        return _to_resource(row)

    async def _migrate(self) -> None:
        """Create missing tables and record the schema version, one process at a time.

        Version 1 -> 2 only added tables (which `create_all` makes), so upgrading is
        recording the new version; a table that changes shape will need a real step here.
        """
        async with self._sessions.begin() as session:
            await lock_for_migration(session)
            row = await session.get(SchemaRow, 1) if await _has_schema(session) else None
            if row is not None and row.version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the database has schema version {row.version}, newer than this ComputeNet "
                    f"understands ({SCHEMA_VERSION}); upgrade ComputeNet or use another --state-dir"
                )
            await session.run_sync(lambda s: Base.metadata.create_all(s.connection()))
            if row is None:
                session.add(SchemaRow(id=1, version=SCHEMA_VERSION))
            else:
                row.version = SCHEMA_VERSION
            await seed(session)

    def _notify(self) -> None:
        self._watchers.notify()


async def _upsert(session: AsyncSession, resource: AnyResource) -> tuple[ResourceRow, ApplyAction]:
    meta = resource.metadata
    spec = resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    row = await session.get(ResourceRow, (resource.kind, meta.name), with_for_update=True)
    now = _now()
    if row is None:
        if meta.resource_version is not None:
            raise NotFound(resource.kind, meta.name)
        row = ResourceRow(
            kind=resource.kind,
            name=meta.name,
            labels=meta.labels,
            annotations=meta.annotations,
            spec=spec,
            status=None,
            resource_version=1,
            generation=1,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        return row, "created"
    _check_version(row, meta.resource_version)
    if (row.spec, row.labels, row.annotations) == (spec, meta.labels, meta.annotations):
        return row, "unchanged"
    if row.spec != spec:
        row.generation += 1
    row.spec, row.labels, row.annotations = spec, meta.labels, meta.annotations
    row.resource_version += 1
    row.updated_at = now
    return row, "configured"


def _check_version(row: ResourceRow, expected: int | None) -> None:
    if expected is not None and expected != row.resource_version:
        raise Conflict(row.kind, row.name, expected, row.resource_version)


def _to_resource(row: ResourceRow) -> AnyResource:
    data: dict[str, Any] = {
        "kind": row.kind,
        "metadata": {
            "name": row.name,
            "labels": row.labels,
            "annotations": row.annotations,
            "resourceVersion": row.resource_version,
            "generation": row.generation,
            # SQLite drops the zone; every timestamp we write is UTC.
            "creationTimestamp": row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC),
        },
        "spec": row.spec,
    }
    if row.status is not None:
        data["status"] = row.status
    return cast(AnyResource, KINDS[row.kind].model_validate(data))


def _now() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """Turn on WAL, waiting for other processes that open the same new file at the same moment.

    Changing the journal mode takes an exclusive lock, and SQLite answers "database is locked"
    at once instead of waiting out its busy timeout; once the file is in WAL mode, this is a no-op.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # a driver thread, not the event loop


async def _has_schema(session: AsyncSession) -> bool:
    """Whether the schema table exists yet (it does not in a new database)."""
    table = SchemaRow.__tablename__
    return bool(await session.run_sync(lambda s: s.connection().dialect.has_table(s.connection(), table)))
