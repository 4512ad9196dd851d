"""Leases in the database: read one with the database's clock, write one by compare-and-swap.

This module only does the SQL; whether to take, renew or leave a lease is decided by the
pure functions of `computenet.control.leader`. A write names the `version` it read and
changes the row only if that is still the version (`UPDATE ... WHERE version = :read`),
so of two replicas that read the same expired lease, exactly one takes it. Times come
from the database's clock (`now` in each statement), so replicas whose clocks disagree
still agree on when a lease expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Float, case, literal_column, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .tables import LeaseRow

# Dialect -> the database's own time as unix seconds (float).
_NOW_SQL = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
}


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str  # "" when released
    acquired_at: float  # database clock, unix seconds
    renewed_at: float
    duration_s: float
    transitions: int
    version: int

    @property
    def expires_at(self) -> float:
        return self.renewed_at + self.duration_s


@dataclass(frozen=True, slots=True)
class LeaseReading:
    """A lease (None: never taken) and the database's clock when it was read."""

    lease: Lease | None
    now: float


class LeaseStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], dialect: str) -> None:
        if dialect not in _NOW_SQL:
            raise ValueError(f"leases need SQLite or PostgreSQL, not {dialect}")
        self._sessions = sessions
        self._now_sql = _NOW_SQL[dialect]

    def _now(self) -> ColumnElement[float]:
        return literal_column(self._now_sql, Float)

    async def read(self, name: str) -> LeaseReading:
        async with self._sessions() as session:
            now = float((await session.execute(select(self._now()))).scalar_one())
            row = await session.get(LeaseRow, name)
            return LeaseReading(_lease(row) if row is not None else None, now)

    async def create(self, name: str, holder: str, duration_s: float) -> bool:
        """Take a lease nobody ever took; False when another replica created it first."""
        now = await self.read(name)
        row = LeaseRow(
            name=name,
            holder=holder,
            acquired_at=now.now,
            renewed_at=now.now,
            duration_s=duration_s,
            transitions=0,
            version=1,
        )
        try:
            async with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            return False
        return True

    async def write(self, name: str, holder: str, duration_s: float, *, read_version: int) -> bool:
        """Take or renew: stamp `holder` and the database's time, if the lease is still at `read_version`.

        Taking it from someone else (or from nobody, once released) counts a transition and
        restarts `acquired_at`; renewing keeps both.
        """
        changes_hands = LeaseRow.holder != holder
        statement = (
            update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.version == read_version)
            .values(
                holder=holder,
                renewed_at=self._now(),
                acquired_at=case((changes_hands, self._now()), else_=LeaseRow.acquired_at),
                transitions=case((changes_hands, LeaseRow.transitions + 1), else_=LeaseRow.transitions),
                duration_s=duration_s,
                version=LeaseRow.version + 1,
            )
        )
        async with self._sessions.begin() as session:
            result = await session.execute(statement)
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def release(self, name: str, holder: str) -> bool:
        """Give the lease up at once (a clean shutdown), so a follower need not wait for it to expire."""
        statement = (
            update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.holder == holder)
            .values(holder="", renewed_at=0.0, version=LeaseRow.version + 1)
        )
        async with self._sessions.begin() as session:
            result = await session.execute(statement)
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _lease(row: LeaseRow) -> Lease:
    return Lease(
        name=row.name,
        holder=row.holder,
        acquired_at=row.acquired_at,
        renewed_at=row.renewed_at,
        duration_s=row.duration_s,
        transitions=row.transitions,
        version=row.version,
    )
