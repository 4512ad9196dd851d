"""Persistence of usage records: batched idempotent writes, totals per tenant/model/day, spend.

The gateway's meter hands over batches off the request path and retries a batch
whose write failed or timed out, so a write must be idempotent: a request id
already stored is skipped (`ON CONFLICT DO NOTHING`, which SQLite and PostgreSQL
both speak), never counted twice. Each batch is one INSERT statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from sqlalchemy import Insert, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from computenet.api import UsageRecord

from .tables import UsageRow

SpendScope = Literal["tenant", "key"]

# Dialect -> an INSERT into `usage` that skips rows whose request_id is already there.
_INSERT_OR_IGNORE: dict[str, Callable[[], Insert]] = {
    "sqlite": lambda: sqlite.insert(UsageRow).on_conflict_do_nothing(index_elements=["request_id"]),
    "postgresql": lambda: postgresql.insert(UsageRow).on_conflict_do_nothing(index_elements=["request_id"]),
}


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """The requests of one tenant to one public model on one UTC day, summed."""

    tenant: str
    model: str
    day: date
    requests: int
    errors: int  # status >= 400, the client's 499 included
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float
    mean_latency_s: float

    def to_wire(self) -> dict[str, Any]:
        """The control API's shape (camelCase), which `computenet usage` prints."""
        return {
            "tenant": self.tenant,
            "model": self.model,
            "day": self.day.isoformat(),
            "requests": self.requests,
            "errors": self.errors,
            "promptTokens": self.prompt_tokens,
            "cachedTokens": self.cached_tokens,
            "completionTokens": self.completion_tokens,
            "costUsd": self.cost_usd,
            "meanLatencySeconds": self.mean_latency_s,
        }


class UsageStore:
    """The store's `UsageSink`, and the queries over what it kept."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], dialect: str) -> None:
        if dialect not in _INSERT_OR_IGNORE:
            raise ValueError(f"usage records need SQLite or PostgreSQL, not {dialect}")
        self._sessions = sessions
        self._insert = _INSERT_OR_IGNORE[dialect]

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch in one statement; records whose request_id is already stored are skipped."""
        rows = list({r.request_id: _row(r) for r in records}.values())
        if not rows:
            return
        async with self._sessions.begin() as session:
            await session.execute(self._insert(), rows)

    async def totals(
        self, *, tenant: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[UsageTotal]:
        """Totals per (tenant, model, UTC day) of requests started in [since, until)."""
        groups = (UsageRow.tenant, UsageRow.model, UsageRow.day)
        query = (
            select(
                *groups,
                func.count(),
                func.sum(case((UsageRow.status >= 400, 1), else_=0)),
                func.sum(UsageRow.prompt_tokens),
                func.sum(UsageRow.cached_tokens),
                func.sum(UsageRow.completion_tokens),
                func.sum(UsageRow.cost_usd),
                func.avg(UsageRow.latency_s),
            )
            .where(*_window(since, until))
            .group_by(*groups)
            .order_by(*groups)
        )
        if tenant is not None:
            query = query.where(UsageRow.tenant == tenant)
        async with self._sessions() as session:
            result = await session.execute(query)
            return [_total(row) for row in result.all()]

    async def spend(self, scope: SpendScope, *, since: float | None = None) -> dict[str, float]:
        """USD spent since `since` per tenant or per key id: what a restarted gateway's budgets start at."""
        column = UsageRow.tenant if scope == "tenant" else UsageRow.key_id
        query = select(column, func.sum(UsageRow.cost_usd)).where(*_window(since, None)).group_by(column)
        async with self._sessions() as session:
            result = await session.execute(query)
            return {str(name): float(cost or 0.0) for name, cost in result.all()}


def _window(since: float | None, until: float | None) -> list[Any]:
    where = []
    if since is not None:
        where.append(UsageRow.started_at >= since)
    if until is not None:
        where.append(UsageRow.started_at < until)
    return where


def _row(record: UsageRecord) -> dict[str, Any]:
    row = asdict(record)
    row["day"] = datetime.fromtimestamp(record.started_at, UTC).date()
    return row


def _total(row: Any) -> UsageTotal:
    tenant, model, day, requests, errors, prompt, cached, completion, cost, latency = row
    return UsageTotal(
        tenant=tenant,
        model=model,
        day=day,
        requests=int(requests),
        errors=int(errors or 0),
        prompt_tokens=int(prompt or 0),
        cached_tokens=int(cached or 0),
        completion_tokens=int(completion or 0),
        cost_usd=float(cost or 0.0),
        mean_latency_s=float(latency or 0.0),
    )
