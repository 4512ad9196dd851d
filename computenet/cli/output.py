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


def _nodes(row: Row) -> str:
    status = row.get("status") or {}
    return f"{status.get('readyNodes', 0)}/{status.get('nodes', 0)}"


def _targets(targets: list[Row]) -> str:
    return ",".join(
        f"deployment/{t['deployment']}" if t.get("deployment") else f"provider/{t['provider']}:{t['model']}"
        for t in targets
    )


def _config_state(row: Row) -> str:
    """`Accepted`, `InvalidSpec`, or `Pending` until a gateway has read it."""
    return str(_condition(row, "Ready").get("reason", "Pending"))


def _limit(row: Row, field: str) -> object:
    return (row["spec"].get("limits") or {}).get(field) or "<none>"


def _budget(row: Row) -> str:
    budget = row["spec"].get("budget")
    return f"${budget['limitUsd']:g}/{budget.get('period', 'month')}" if budget else "<none>"


# Any kind without its own columns (a kind added later) still prints as a table.
DEFAULT_COLUMNS: list[Column] = [
    ("NAME", lambda r: r["metadata"]["name"]),
    ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
]


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
        ("NODES", _nodes),
        ("GPUS", lambda r: (r.get("status") or {}).get("gpus", 0)),
        ("REPLICAS", lambda r: (r.get("status") or {}).get("replicas", 0)),
        ("STATUS", lambda r: _condition(r, "Ready").get("reason", "Pending")),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "Route": [
        ("NAME", lambda r: r["metadata"]["name"]),
        ("MODEL", lambda r: r["spec"].get("model") or r["metadata"]["name"]),
        ("TARGETS", lambda r: _targets(r["spec"]["targets"])),
        ("FALLBACKS", lambda r: _targets(r["spec"].get("fallbacks", [])) or "<none>"),
        ("STATUS", _config_state),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "Provider": [
        ("NAME", lambda r: r["metadata"]["name"]),
        ("BASE URL", lambda r: r["spec"]["baseUrl"]),
        ("MODELS", lambda r: ",".join(m["name"] for m in r["spec"].get("models", [])) or "<none>"),
        ("STATUS", _config_state),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "Tenant": [
        ("NAME", lambda r: r["metadata"]["name"]),
        ("REQUESTS/MIN", lambda r: _limit(r, "requestsPerMinute")),
        ("TOKENS/MIN", lambda r: _limit(r, "tokensPerMinute")),
        ("BUDGET", _budget),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "APIKey": [
        ("NAME", lambda r: r["metadata"]["name"]),
        ("TENANT", lambda r: r["spec"]["tenant"]),
        ("MODELS", lambda r: ",".join(r["spec"].get("models", [])) or "<all>"),
        ("FROM", lambda r: f"env {r['spec']['keyFromEnv']}" if r["spec"].get("keyFromEnv") else "sha256"),
        ("EXPIRES", lambda r: r["spec"].get("expiresAt") or "<never>"),
        ("AGE", lambda r: age(r["metadata"].get("creationTimestamp"))),
    ],
    "Replica": [
        ("NAME", lambda r: r["name"]),
        ("DEPLOYMENT", lambda r: r["deployment"]),
        ("ROLE", lambda r: r["role"]),
        ("POOL", lambda r: r["pool"]),
        ("NODE", lambda r: r.get("node") or "<none>"),
        ("PHASE", lambda r: r["phase"]),
        ("RESTARTS", lambda r: r["restarts"]),
        ("URL", lambda r: r["url"] or "<none>"),
        ("AGE", lambda r: age(r["startedAt"])),
    ],
    "Node": [
        ("NAME", lambda r: r["name"]),
        ("POOL", lambda r: r["pool"]),
        ("REGION", lambda r: r["region"]),
        ("READY", lambda r: r["ready"]),
        ("GPUS", lambda r: f"{r['gpus']}x{r['gpuType']}" if r["gpus"] else "0"),
        ("CPU", lambda r: f"{r['cpu']:g}"),
        ("MEMORY", lambda r: f"{r['memoryGb']:g}Gi"),
        ("TAINTS", lambda r: ",".join(r["taints"]) or "<none>"),
    ],
}


def table(kind: str, rows: Sequence[Row]) -> str:
    columns = COLUMNS.get(kind, DEFAULT_COLUMNS)
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
