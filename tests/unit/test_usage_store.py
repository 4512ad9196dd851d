"""Usage records in the store: one INSERT per batch, retries never double count, totals, spend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.dialects import postgresql

from computenet.api import UsageRecord
from computenet.store import ResourceStore, UsageTotal
from computenet.store.usage import _INSERT_OR_IGNORE

from .records import usage_record

DAY1 = datetime(2026, 11, 1, 23, 59, 58, tzinfo=UTC).timestamp()  # two seconds before midnight UTC
DAY2 = datetime(2026, 11, 2, 0, 0, 1, tzinfo=UTC).timestamp()


def _record(request_id: str, started_at: float = DAY1, **fields: Any) -> UsageRecord:
    typical = {"key_id": "k1", "prompt_tokens": 100, "cached_tokens": 40, "completion_tokens": 10}
    typical |= {"cost_usd": 0.25, "ttft_s": 0.05, "latency_s": 1.0}
    return usage_record(request_id, started_at=started_at, **{**typical, **fields})


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ResourceStore]:
    opened = await ResourceStore.open(database_url)
    yield opened
    await opened.close()


def _count_inserts(store: ResourceStore) -> list[str]:
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USAGE"):
            statements.append(statement)

    event.listen(store._engine.sync_engine, "before_cursor_execute", seen)
    return statements


async def test_a_batch_is_one_insert_and_a_retry_counts_nothing_twice(store: ResourceStore) -> None:
    inserts = _count_inserts(store)
    batch = [_record(f"r{i}") for i in range(50)]
    await store.usage.write_usage(batch)
    assert len(inserts) == 1
    await store.usage.write_usage(batch)  # the same batch again, as after a timeout
    await store.usage.write_usage([*batch[:10], _record("r50"), _record("r50")])  # overlap and a repeat
    await store.usage.write_usage([])
    assert len(inserts) == 3
    (total,) = await store.usage.totals()
    assert total.requests == 51 and total.prompt_tokens == 5100
    assert total.cost_usd == pytest.approx(51 * 0.25)


async def test_totals_are_the_sums_per_tenant_model_and_utc_day(store: ResourceStore) -> None:
    records = [
        _record("a", latency_s=1.0),
        _record("b", latency_s=3.0, status=429, completion_tokens=0, cost_usd=0.0),
        _record("c", DAY2, latency_s=2.0, status=499),
        _record("d", tenant="beta", model="embed", prompt_tokens=7, cached_tokens=0, cost_usd=0.5),
        _record("e", status=503, backend="", endpoint="", ttft_s=None, estimated=True),
    ]
    await store.usage.write_usage(records)
    totals = await store.usage.totals()
    assert totals == [
        UsageTotal("acme", "llm", date(2026, 11, 1), 3, 2, 300, 120, 20, 0.5, 5.0 / 3),
        UsageTotal("acme", "llm", date(2026, 11, 2), 1, 1, 100, 40, 10, 0.25, 2.0),
        UsageTotal("beta", "embed", date(2026, 11, 1), 1, 0, 7, 0, 10, 0.5, 1.0),
    ]
    for field in ("prompt_tokens", "cached_tokens", "completion_tokens"):
        assert sum(getattr(t, field) for t in totals) == sum(getattr(r, field) for r in records)
    assert sum(t.cost_usd for t in totals) == pytest.approx(sum(r.cost_usd for r in records))


async def test_totals_filter_by_tenant_and_window(store: ResourceStore) -> None:
    await store.usage.write_usage([_record("a"), _record("b", DAY2), _record("c", tenant="beta")])
    assert [(t.tenant, t.day.day) for t in await store.usage.totals(tenant="acme")] == [
        ("acme", 1),
        ("acme", 2),
    ]
    assert [t.day.day for t in await store.usage.totals(since=DAY2)] == [2]
    assert [t.tenant for t in await store.usage.totals(until=DAY2)] == ["acme", "beta"]
    assert await store.usage.totals(since=DAY1 + 1, until=DAY2) == []


async def test_spend_per_tenant_and_per_key(store: ResourceStore) -> None:
    await store.usage.write_usage(
        [
            _record("a", cost_usd=1.0),
            _record("b", DAY2, cost_usd=2.0, key_id="k2"),
            _record("c", DAY2, cost_usd=4.0, tenant="beta", key_id="k3"),
        ]
    )
    assert await store.usage.spend("tenant") == {"acme": 3.0, "beta": 4.0}
    assert await store.usage.spend("key", since=DAY2) == {"k2": 2.0, "k3": 4.0}
    assert await store.usage.spend("tenant", since=DAY2 + 1) == {}


def test_the_insert_or_ignore_compiles_for_postgresql() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    sql = str(_INSERT_OR_IGNORE["postgresql"]().compile(dialect=dialect))
    assert sql.startswith("INSERT INTO usage") and sql.endswith("ON CONFLICT (request_id) DO NOTHING")
