"""Published endpoints in the database: the `EndpointSink` of a control plane whose gateways run apart.

The leader's reconciler publishes each deployment's ready endpoints here; every control
API replica serves them with the `endpoints` revision, and gateway replicas long-poll
for a revision newer than the one they hold. A publish or withdraw bumps the revision
in its own transaction, so a reader that sees revision N sees every change up to N.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from computenet.api import Endpoint, PolicySpec, PublishedEndpoints

from .changes import Watchers, bump
from .tables import EndpointRow, RevisionRow
from .transactions import lock_for_write

TOPIC = "endpoints"


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    revision: int
    deployments: tuple[PublishedEndpoints, ...]  # by deployment name


class EndpointStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.watchers = Watchers()

    async def publish(
        self, deployment: str, endpoints: Sequence[Endpoint], *, model: str, policy: PolicySpec | str
    ) -> None:
        wire = PublishedEndpoints(deployment, model, policy, tuple(endpoints)).to_wire()
        async with self._sessions.begin() as session:
            await lock_for_write(session)
            row = await session.get(EndpointRow, deployment, with_for_update=True)
            if row is None:
                row = EndpointRow(deployment=deployment)
                session.add(row)
            elif (row.model, row.policy, row.endpoints) == (wire["model"], wire["policy"], wire["endpoints"]):
                return
            row.model, row.policy, row.endpoints = wire["model"], wire["policy"], wire["endpoints"]
            row.updated_at = time.time()
            await bump(session, TOPIC)
        self.watchers.notify()

    async def withdraw(self, deployment: str) -> None:
        await self._delete(EndpointRow.deployment == deployment)

    async def retain(self, deployments: Collection[str]) -> None:
        """Withdraw every deployment not in `deployments`: what a new leader does first, since the
        previous one may have died between a deployment's delete and its withdrawal."""
        await self._delete(EndpointRow.deployment.not_in(list(deployments)))

    async def _delete(self, where: ColumnElement[bool]) -> None:
        async with self._sessions.begin() as session:
            result = await session.execute(delete(EndpointRow).where(where))
            if not result.rowcount:  # type: ignore[attr-defined]
                return
            await bump(session, TOPIC)
        self.watchers.notify()

    async def snapshot(self) -> EndpointSnapshot:
        async with self._sessions() as session:
            # The revision first: rows read after it are at least as new, never older.
            revision = await session.scalar(select(RevisionRow.revision).where(RevisionRow.topic == TOPIC))
            rows = await session.scalars(select(EndpointRow).order_by(EndpointRow.deployment))
            published = tuple(_published(row) for row in rows)
        return EndpointSnapshot(int(revision or 0), published)


def _published(row: EndpointRow) -> PublishedEndpoints:
    return PublishedEndpoints.from_wire(
        {"deployment": row.deployment, "model": row.model, "policy": row.policy, "endpoints": row.endpoints}
    )
