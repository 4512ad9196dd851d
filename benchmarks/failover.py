"""How long ComputeNet takes to recover from the two failures of issue 7: the control plane's leader
dying, and a Ray worker node dying. The distributed mode is only as good as its failover, and its
bounds (a takeover within 15 s, no request lost before its first byte when a node goes) were asserted
by tests; this measures them, run after run, on real processes.

    .venv/bin/python benchmarks/failover.py [--only leader|ray] [--runs N] [--interval S] [--out FILE.json]

Needs PostgreSQL (apt-get install postgresql) and `pip install -e '.[dev]'` (Ray, asyncpg). Everything
binds loopback addresses and goes away at the end; the servers are started by the test suite's harnesses
(`recovery/` says which).

* **Leader** (`--runs`, default 5): two `computenet control --leader-elect` on one real PostgreSQL
  (default lease timings: 8 s lease, 1.5 s retry), the local pool, the demo deployment (two `sim`
  replicas), and `computenet gateway --control URL` on the follower. The leader is killed with SIGKILL,
  its replicas with it, at a random point of its renewal period. Measured from the kill: (a) the
  follower's `GET /api/v1/leader` says it leads, (b) the deployment's status says 2 ready replicas again
  (a status the new leader wrote), (c) a request sent after the kill has streamed to its end through
  the gateway.
* **Ray node** (`--runs`, default 3, a fresh cluster each): head + H100 node + A10G node on loopback,
  the reconciler, Ray pool and gateway in this process, a deployment spreading its two one-GPU replicas
  over the GPU nodes. The A10G node is killed (every process of it). Measured from the kill: the pool
  reports the node not ready, the replacement replica is Ready on the H100 node, and the gateway routes
  to it. Ray's failure detection is shortened as in the tests, 3 missed health checks 0.5 s apart: with
  Ray's defaults (5 missed, 3 s apart) a dead node is declared dead about 13.5 s later.

Both run under steady traffic through the gateway: a streamed completion every `--interval` seconds
(default 0.1), open loop. `failed` counts requests that got an error or no answer before their first
byte, `broken` streams cut after it. Every figure is a poll's first sight (every 0.1 s), so each is late
by up to 0.1 s plus the poll's own latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from gateway.flags import positive
from recovery import NotInstalled, leader, ray_node

TAKEOVER_BOUND_S = 15.0  # issue 7's bound for a follower to take over from a killed leader
COLUMNS = {  # each scenario's figures, in its dataclass's field order, as the table heads them
    "leader": ["takeover s", "2/2 ready s", "request served s", "requests", "failed", "broken"],
    "ray": ["node not ready s", "replacement Ready s", "routed to s", "requests", "failed", "broken"],
}
DEFAULT_RUNS = {"leader": 5, "ray": 3}
RUNS: dict[str, Callable[[int, Path, float], Iterator[Any]]] = {"leader": leader.runs, "ray": ray_node.runs}


def parse(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--only", choices=sorted(COLUMNS), help="one scenario (default: both)")
    parser.add_argument(
        "--runs", type=positive(int), metavar="N", help="runs of each scenario (default: 5 leader, 3 Ray)"
    )
    parser.add_argument(
        "--interval", type=positive(float), default=0.1, metavar="S", help="seconds between requests"
    )
    parser.add_argument("--out", type=Path, metavar="FILE.json", help="also write every run's figures here")
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"argument --out: no directory {str(args.out.parent)!r} to write {args.out.name} in")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = Path(tempfile.mkdtemp(prefix="cn-failover-"))
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for scenario in [args.only] if args.only else list(COLUMNS):
            runs = args.runs or DEFAULT_RUNS[scenario]
            results[scenario] = report(scenario, RUNS[scenario](runs, work, args.interval))
    except NotInstalled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = any("error" in run for runs in results.values() for run in runs)
    if failed:
        print(f"\nA run failed; the processes' logs are kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if args.out is not None:
        about = {"date": date.today().isoformat(), "command": " ".join(sys.argv), "machine": machine()}
        args.out.write_text(json.dumps({**about, **results}, indent=2) + "\n")
    return 1 if failed else 0


def report(scenario: str, runs: Iterable[Any]) -> list[dict[str, Any]]:
    """Print the scenario's table, a row as each run ends, then the median and max of the runs that
    did not fail; the runs' figures by field name (`error` for a failed run)."""
    heads = COLUMNS[scenario]
    print(f"\n{'Leader takeover' if scenario == 'leader' else 'Ray node death'}\n")
    print("| run | " + " | ".join(heads) + " |")
    print("| --- " * (len(heads) + 1) + "|", flush=True)
    figures: list[dict[str, Any]] = []
    for index, run in enumerate(runs, 1):
        if isinstance(run, str):
            figures.append({"error": run})
            print(f"| {index} | failed: {run} |", flush=True)
            continue
        figures.append(asdict(run))
        print(row(str(index), list(figures[-1].values()), flag(scenario, figures[-1])), flush=True)
    done = [list(f.values()) for f in figures if "error" not in f]
    if done:
        for name, summary in (("median", statistics.median), ("max", max)):
            print(row(f"**{name}**", [summary(column) for column in zip(*done, strict=True)]))
    return figures


def row(label: str, values: list[float], note: str = "") -> str:
    cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in values]
    return f"| {label} | " + " | ".join(cells) + f" |{note}"


def flag(scenario: str, figures: dict[str, Any]) -> str:
    """What in a run's figures breaks a bound: a slow takeover; a request failed before its first byte
    when a Ray node died (the replica left should have served it)."""
    if scenario == "leader" and figures["takeover_s"] > TAKEOVER_BOUND_S:
        return f"  <- takeover over the {TAKEOVER_BOUND_S:g} s bound"
    if scenario == "ray" and figures["failed"]:
        return "  <- requests failed before their first byte"
    return ""


def machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    sys.exit(main())
