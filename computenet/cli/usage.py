"""`computenet usage`: requests, tokens, cost and latency per tenant, model and UTC day.

`--since` and `--until` take a date (`2026-11-01`), a time (`2026-11-01T12:00:00Z`,
UTC unless it names a zone) or a duration back from now (`7d`, `12h`). The table
ends with a TOTAL line; `-o csv` and `-o json` print the same rows for scripts.

A standalone `computenet gateway --usage-db URL` has no control API: `--usage-db URL`
here reads the same database directly.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from computenet.store import ResourceStore, SchemaTooNew

from .client import CliError, ControlClient
from .dburl import database_url, driver_missing
from .output import COLUMNS, Row, table

_DURATION = re.compile(r"^(\d+)([smhdw])$")  # the control API reads the same forms
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FIELDS = [  # (csv header, wire name)
    ("tenant", "tenant"),
    ("model", "model"),
    ("day", "day"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("prompt_tokens", "promptTokens"),
    ("cached_tokens", "cachedTokens"),
    ("completion_tokens", "completionTokens"),
    ("cost_usd", "costUsd"),
    ("mean_latency_s", "meanLatencySeconds"),
]
COLUMNS["UsageTotal"] = [
    ("TENANT", lambda r: r["tenant"] or "<none>"),
    ("MODEL", lambda r: r["model"]),
    ("DAY", lambda r: r["day"]),
    ("REQUESTS", lambda r: r["requests"]),
    ("ERRORS", lambda r: r["errors"]),
    ("PROMPT", lambda r: r["promptTokens"]),
    ("CACHED", lambda r: r["cachedTokens"]),
    ("COMPLETION", lambda r: r["completionTokens"]),
    ("COST_USD", lambda r: f"{r['costUsd']:.4f}"),
    ("MEAN_LATENCY_S", lambda r: f"{r['meanLatencySeconds']:.3f}"),
]


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    usage = add("usage", help="usage totals per tenant, model and day")
    usage.add_argument("--tenant", help="only this tenant")
    usage.add_argument("--since", metavar="WHEN", help="from: 7d, 12h, 2026-11-01 or an ISO time")
    usage.add_argument("--until", metavar="WHEN", help="up to (not including); same forms as --since")
    usage.add_argument("-o", "--output", choices=["table", "csv", "json"], default="table")
    usage.add_argument(
        "--usage-db",
        metavar="URL",
        help="read this database instead of asking the server (what `computenet gateway --usage-db` wrote)",
    )


def cmd_usage(client: ControlClient, args: argparse.Namespace) -> None:
    now = time.time()
    since, until = (
        None if text is None else when(f"--{flag}", text, now=now, future=False)
        for flag, text in (("since", args.since), ("until", args.until))
    )
    if args.usage_db:
        items = asyncio.run(_read_db(_usage_db(args.usage_db), args.tenant, since, until))
    else:
        query = {"tenant": args.tenant, "since": since, "until": until}
        params = {k: str(v) for k, v in query.items() if v is not None}
        items = client.json("GET", "/usage", params=params)["items"]
    print(render_usage(items, args.output))


def _usage_db(url: str) -> str:
    return database_url("--usage-db", url, example="usage.db", must_exist=True)


async def _read_db(url: str, tenant: str | None, since: float | None, until: float | None) -> list[Row]:
    try:
        store = await ResourceStore.open(url)
    except ImportError as exc:
        raise driver_missing("--usage-db", exc) from None
    except (OSError, ValueError, SQLAlchemyError, SchemaTooNew) as exc:
        bad_url = isinstance(exc, ArgumentError)  # e.g. an unknown driver: the user's input, exit 2
        message = f"error: --usage-db: cannot read {url}: {exc}".splitlines()[0]
        raise CliError(message, exit_code=2 if bad_url else 1) from None
    try:
        totals = await store.usage.totals(tenant=tenant, since=since, until=until)
    finally:
        await store.close()
    return [t.to_wire() for t in totals]


def render_usage(items: list[Row], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(items, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([header for header, _ in _FIELDS])
        writer.writerows([item[name] for _, name in _FIELDS] for item in items)
        return out.getvalue().rstrip("\n")
    if not items:
        return "No usage found."
    return table("UsageTotal", [*items, _total(items)])


def _total(items: list[Row]) -> Row:
    requests = sum(i["requests"] for i in items)
    latency = sum(i["meanLatencySeconds"] * i["requests"] for i in items) / max(requests, 1)
    sums = {name: sum(i[name] for i in items) for _, name in _FIELDS[3:-1]}
    return {"tenant": "TOTAL", "model": "", "day": "", **sums, "meanLatencySeconds": latency}


def when(flag: str, text: str, *, now: float, future: bool) -> float:
    """Unix seconds of a duration from now (ahead when `future`, else back) or of a date or time."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = int(match[1]) * _UNIT_S[match[2]]
        return now + seconds if future else now - seconds
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        example = "30d" if future else "7d"
        raise CliError(
            f"error: {flag} must be a duration like {example}, a date like 2026-11-01 "
            f"or a time like 2026-11-01T12:00:00Z, got {text!r}",
            exit_code=2,
        ) from None
    return at.replace(tzinfo=at.tzinfo or UTC).timestamp()
