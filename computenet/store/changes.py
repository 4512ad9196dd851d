"""Change notification within one process and across processes sharing one database.

Within a process, every write sets the events of its topic's `Watchers` at once. Across
processes (two control-plane replicas, the control API of a follower) each change also
bumps its topic's counter in the `revisions` table, in the same transaction, and
`poll_revisions` reads those few rows every second or so and wakes the local watchers of
each topic whose counter moved.

Why a revision poll rather than PostgreSQL's LISTEN/NOTIFY: it works the same on SQLite
(several processes on one file) and PostgreSQL; it reads state rather than messages, so
nothing is missed while a connection drops or the database fails over (a listener loses
the notifications sent while it was away, and PgBouncer's transaction pooling drops LISTEN
altogether); and it costs one primary-key read of three rows per interval. The price is up
to one interval of delay, small next to a control-plane pass, which also resyncs on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .tables import RevisionRow

log = logging.getLogger(__name__)

TOPICS = ("resources", "keys", "endpoints")


class Watchers:
    """The events of one topic's watchers: `notify` sets them all; each watcher clears its own.

    Held weakly: a watcher that drops its event (a reconciler pass that asks for a fresh one
    each time, a long-poll that answered) is forgotten without having to say so.
    """

    def __init__(self) -> None:
        self._events: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def watch(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.add(event)
        return event

    def unwatch(self, event: asyncio.Event) -> None:
        """Forget a watcher that is done (a long-poll request that answered)."""
        self._events.discard(event)

    def notify(self) -> None:
        for event in list(self._events):
            event.set()


async def bump(session: AsyncSession, topic: str) -> None:
    """Count one change of `topic`; call inside the transaction that makes the change."""
    await session.execute(
        update(RevisionRow).where(RevisionRow.topic == topic).values(revision=RevisionRow.revision + 1)
    )


async def seed(session: AsyncSession) -> None:
    """Make sure every topic has its counter row (a new database, or one from before revisions)."""
    present = set(await session.scalars(select(RevisionRow.topic)))
    session.add_all(RevisionRow(topic=t, revision=0) for t in TOPICS if t not in present)


async def read_revisions(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(select(RevisionRow.topic, RevisionRow.revision))
        return {topic: revision for topic, revision in rows.all()}


async def poll_revisions(
    sessions: async_sessionmaker[AsyncSession], watchers: Mapping[str, Watchers], interval_s: float
) -> None:
    """Wake each topic's watchers when another process changed it; runs until cancelled.

    A failed read is logged and retried: the database may be failing over, and the
    watchers' own resync timers carry on meanwhile.
    """
    seen: dict[str, int] | None = None
    while True:
        try:
            now = await read_revisions(sessions)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("reading change revisions failed (%s); retrying in %.1fs", exc, interval_s)
        else:
            if seen is not None:
                for topic, revision in now.items():
                    if seen.get(topic) != revision and topic in watchers:
                        watchers[topic].notify()
            seen = now
        await asyncio.sleep(interval_s)
