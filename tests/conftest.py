"""Suite-wide fixtures and hooks.

* Every async test fails if it leaves asyncio tasks running.
* A fixture whose real server is not installed (it raises `NotInstalled`: PostgreSQL, Ray) skips
  its tests, or fails them under CI (the `CI` environment variable is set), which installs everything.
* The PostgreSQL fixtures (`database_url`, `postgres_url`, `postgres_server`) are here, so that every
  test module can ask for them; the server itself is `postgres_server.py`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer
from prerequisites import NotInstalled

from computenet.store import sqlite_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.function):
            item.fixturenames.insert(0, "_no_leaked_tasks")  # first up, last down


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Skip (fail under CI) a test whose fixtures need a server that is not installed. Here rather than
    in each fixture: a session fixture's error is cached and raised again, unchanged, for later tests."""
    try:
        return (yield)
    except NotInstalled as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}, and CI must run them", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)  # let cancelled tasks finish unwinding
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"test left asyncio tasks running: {[t.get_name() for t in leaked]}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session."""
    with PostgresServer.started() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database for one test."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs twice: on a SQLite file, and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("postgres_url"))
