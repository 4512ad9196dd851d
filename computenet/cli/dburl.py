"""Database URLs given on the command line (`--store`, `--usage-db`): checked before anything opens them.

A bad URL is the user's input (exit 2) and the message names the flag and a URL that works;
opening a SQLite URL creates its file, so a mistyped path that must already exist is refused
instead of being read as an empty database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .client import CliError

SUPPORTED = ("sqlite", "postgresql")
ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
"""The store runs on asyncio: a URL written the usual way (`postgresql://...`) gets the async driver."""


def database_url(flag: str, url: str, *, example: str, must_exist: bool) -> str:
    """`url` if it names SQLite or PostgreSQL (and, with `must_exist`, an existing SQLite file), with the
    async driver the store needs when the URL names none."""
    forms = f"give sqlite+aiosqlite:///{example} or postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CliError(f"error: {flag}: {url!r} is not a database URL; {forms}", exit_code=2) from None
    if parsed.get_backend_name() not in SUPPORTED:
        raise CliError(f"error: {flag}: {parsed.get_backend_name()} is not supported; {forms}", exit_code=2)
    if must_exist and parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise CliError(f"error: {flag}: no database file at {parsed.database!r}", exit_code=2)
    if parsed.drivername in ASYNC_DRIVERS:
        return parsed.set(drivername=ASYNC_DRIVERS[parsed.drivername]).render_as_string(hide_password=False)
    return url


def driver_missing(flag: str, exc: ImportError) -> CliError:
    """The error for a URL whose driver is not installed (asyncpg comes with the postgres extra)."""
    hint = "pip install 'computenet[postgres]'" if exc.name == "asyncpg" else f"pip install {exc.name}"
    return CliError(f"error: {flag}: the database driver {exc.name} is not installed; {hint}", exit_code=2)
