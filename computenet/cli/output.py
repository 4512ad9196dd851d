"""Printing resources the way kubectl does: aligned columns, or the whole object as YAML/JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import yaml

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], object]]


def age(timestamp: str | float | None, now: float | None = None) -> str:
    """`5s`, `3m`, `2h`, `4d` since `timestamp` (ISO 8601 or unix seconds)."""
    if timestamp is None:
        return "<unknown>"
    then = timestamp if isinstance(timestamp, float | int) else datetime.fromisoformat(timestamp).timestamp()
    seconds = max(0, int((now or time.time()) - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _condition(row: Row, type_: str) -> Row:
    conditions = (row.get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == type_), {})


def _ready(row: Row) -> str:
    status = row.get("status") or {}
    desired = sum(r.get("replicas", 1) for r in row["spec"].get("roles", []))
    return f"{status.get('readyReplicas', 0)}/{desired}"


COLUMNS: dict[str, list[Column]] = {
    "Deployment": [
        ("NAME", lambda r: r["metadata"]["name"]),
        ("MODEL", lambda r: r["spec"]["model"]),
        ("ENGINE", lambda r: r["spec"]["engine"]),
        ("READY", _ready),
        ("STATUS", lambda r: _condition(r, "Ready").get("reason", "Pending")),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "Model": [
        ("NAME", lambda r: r["metadata"]["name"]),
        ("SOURCE", lambda r: r["spec"]["source"]),
        ("RUNTIMES", lambda r: ",".join(x["engine"] for x in r["spec"].get("runtimes", [])) or "<any>"),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "Pool": [
        ("NAME", lambda r: r["metadata"]["name"]),
        ("TYPE", lambda r: r["spec"]["type"]),
        ("REGION", lambda r: r["spec"]["region"]),
        ("REPLICAS", lambda r: (r.get("status") or {}).get("replicas", 0)),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "Replica": [
        ("NAME", lambda r: r["name"]),
        ("DEPLOYMENT", lambda r: r["deployment"]),
        ("ROLE", lambda r: r["role"]),
        ("POOL", lambda r: r["pool"]),
        ("PHASE", lambda r: r["phase"]),
        ("RESTARTS", lambda r: r["restarts"]),
        ("URL", lambda r: r["url"] or "<none>"),
        ("AGE", lambda r: age(r["startedAt"])),
    ],
}


def table(kind: str, rows: Sequence[Row]) -> str:
    columns = COLUMNS[kind]
    cells = [[name for name, _ in columns]] + [[str(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def render(kind: str, data: Row | list[Row], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip()
    rows = data if isinstance(data, list) else [data]
    if not rows:
        return f"No {kind.lower()}s found."
    return table(kind, rows)
