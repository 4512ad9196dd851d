"""Suite-wide fixtures. Every async test fails if it leaves asyncio tasks running.

The PostgreSQL fixtures (`database_url`, `postgres_url`, `postgres_server`) live in
`postgres_server.py`; they are imported here so that every test module can ask for them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
from postgres_server import database_url, postgres_server, postgres_url

__all__ = ["database_url", "postgres_server", "postgres_url"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.function):
            item.fixturenames.insert(0, "_no_leaked_tasks")  # first up, last down


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)  # let cancelled tasks finish unwinding
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"test left asyncio tasks running: {[t.get_name() for t in leaked]}"
