"""Locks that make read-then-write transactions safe when several processes share the database.

A write here reads a row, decides, and writes it (resourceVersion checks, generation bumps).
On PostgreSQL the read locks the row (`SELECT ... FOR UPDATE`, in the callers), so a second
writer waits and then reads the first one's result. SQLite has no row locks, and its Python
driver begins a transaction only at the first INSERT or UPDATE, after the read: two writers
would both read version N and both write N+1. `lock_for_write` takes SQLite's write lock up
front instead (`BEGIN IMMEDIATE`; a second writer waits up to the busy timeout). Readers are
never locked out: SQLite runs in WAL mode.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Held while a store creates or upgrades its tables: replicas that start together on an empty
# database would otherwise race to create the same tables. PostgreSQL: an advisory lock held to
# the end of the transaction ("cnet" in hex); SQLite: the write lock.
_MIGRATION_LOCK = {
    "postgresql": "SELECT pg_advisory_xact_lock(1668179316)",
    "sqlite": "BEGIN IMMEDIATE",
}


async def lock_for_write(session: AsyncSession) -> None:
    """Call first in a write transaction whose reads decide its writes."""
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("BEGIN IMMEDIATE"))


async def lock_for_migration(session: AsyncSession) -> None:
    """Call first in the transaction that creates or upgrades the tables."""
    await session.execute(text(_MIGRATION_LOCK[session.get_bind().dialect.name]))
