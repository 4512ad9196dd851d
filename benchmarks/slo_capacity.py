"""SLO capacity per routing policy: how fast can the Mooncake trace arrive before the fleet misses its SLO?

    .venv/bin/python benchmarks/slo_capacity.py [--fleets 70b-tp4,8b] [--rates 0.5,0.75,1,1.5,2,3,4]
        [--policies random,round-robin,least-request,prefix,precise-prefix,oracle] [--gateways 1]
        [--max-in-flight 64|auto] [--max-wait 30] [--limit N] [--jobs 2] [--out results.json]
        [--plot docs/img/slo_capacity.png]

Replays the Mooncake conversation trace (12,031 requests, ~59 minutes) on the
virtual clock through a simulated fleet, sped up by each rate, once per policy:

* `70b-tp4`: 16 H100s as 4 replicas of Llama-3.1-70B at tensor-parallel 4 (vLLM
  defaults: 256 sequences, 8192-token steps, 90 % of memory);
* `8b`: 16 single-H100 replicas of Llama-3.1-8B.

In front of the replicas sits the gateway's admission gate as `computenet gateway`
runs it with `maxInFlight` = 64 per replica (about twice the requests of this trace
whose KV fits in one replica's cache, for either model): beyond that, requests wait
in its queue (at most 1024, at most 30 s) and are routed when a slot frees, so
overload shows as 429 and 503 and admitted requests never queue without end
(`--max-in-flight` and `--max-wait` change the gate, to see how it bounds their wait;
`--max-in-flight auto` sizes it as `computenet gateway --max-in-flight auto` does, from
each replica's KV cache and the typical finished request).

The SLO: p90 TTFT <= 2 s and p90 TPOT <= 100 ms with no failed request (a 429 or
503 is a failure). A policy's SLO capacity is the highest rate at which it and every
lower rate meet it. Per run it reports mean/p50/p90/p99 TTFT, p50/p90 TPOT,
throughput, prefix hit rate (prompt tokens served from cache), and the statuses.

`oracle` is the yardstick for hit rate: it knows which conversation each request
belongs to (every request of the trace shares its first 512-token segment, a system
prompt; a conversation is its first two segments) and pins each conversation to
the replica with the fewest requests outstanding at its first turn, so every turn
finds its history wherever the replica's cache (same size as everyone's) kept it.
Sending each request where the longest prefix is cached right now does worse
(19.7 % against 23.6 % for `prefix` on the first 2,000 requests of the 8b fleet):
it ignores load, and the hot replicas evict more. `ideal` is the hit rate with one infinite
cache: no router can beat it.

`--gateways N` routes through N gateway replicas in turn, each with its own
approximate index and sessions (the precise index is the engines' and is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from gateway.flags import listed, positive

from computenet.cli.sim_replay import arrivals
from computenet.cli.sim_routing import make_router, router_factories
from computenet.engines.sim.catalog import load_catalog
from computenet.engines.sim.core import CoreConfig
from computenet.engines.sim.fleet import Fleet, FleetConfig, FleetResult, GatewayGate
from computenet.engines.sim.kvcache import BLOCK_SIZE, segment_hashes
from computenet.engines.sim.routers import ReplicaView, Router
from computenet.engines.sim.scheduler import SimRequest
from computenet.engines.sizing import MaxInFlight, parse_max_in_flight
from computenet.workloads import TraceRequest, percentile, read_trace, select

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "data" / "traces" / "mooncake_conversation.jsonl"
TTFT_SLO_S, TPOT_SLO_S = 2.0, 0.100
MAX_IN_FLIGHT = 64  # per replica, at the gateway's gate
MAX_WAIT_S = 30.0  # the gate's queue timeout (`computenet gateway --queue-timeout`)


@dataclass(frozen=True)
class FleetShape:
    model: str
    tp: int
    replicas: int
    gpu: str = "H100"


FLEETS = {"70b-tp4": FleetShape("llama-3.1-70b", 4, 4), "8b": FleetShape("llama-3.1-8b", 1, 16)}


SEGMENT_BLOCKS = 512 // BLOCK_SIZE  # blocks per Mooncake hash-id segment


class OracleRouter:
    """Perfect conversation affinity (see the module docstring)."""

    def __init__(self) -> None:
        self._pinned: dict[int, int] = {}  # conversation key -> replica index
        self._turn = 0

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        hashes = request.block_hashes
        key = hashes[min(SEGMENT_BLOCKS, len(hashes) - 1)] if hashes else None
        pinned = self._pinned.get(key) if key is not None else None
        for position, view in enumerate(replicas):
            if view.index == pinned:
                return position
        self._turn += 1
        low = min(view.outstanding for view in replicas)
        tied = [i for i, view in enumerate(replicas) if view.outstanding == low]
        position = tied[self._turn % len(tied)]
        if key is not None:
            self._pinned[key] = replicas[position].index
        return position


def ideal_hit_rate(requests: Sequence[TraceRequest]) -> float:
    """Share of prompt tokens a single infinite cache would serve: the leading blocks seen before."""
    seen: set[int] = set()
    hit = total = 0
    for r in requests:
        hashes = segment_hashes(r.hash_ids, r.input_tokens, r.hash_block_tokens, BLOCK_SIZE)
        depth = 0
        while depth < len(hashes) and hashes[depth] in seen:
            depth += 1
        hit += min(depth * BLOCK_SIZE, r.input_tokens - 1)  # the last token is always computed
        total += r.input_tokens
        seen.update(hashes)
    return hit / total if total else 0.0


def _router(policy: str, shape: FleetShape, gateways: int) -> Router:
    if policy == "oracle":
        return OracleRouter()
    return make_router(policy, model=shape.model, gateways=gateways)


def max_in_flight(text: str) -> MaxInFlight:
    """argparse type of `--max-in-flight`: a positive integer or auto."""
    try:
        return parse_max_in_flight("--max-in-flight", text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") from None


def run_one(
    fleet: str,
    policy: str,
    rate: float,
    limit: int | None,
    gateways: int,
    max_in_flight: MaxInFlight = MAX_IN_FLIGHT,
    max_wait_s: float = MAX_WAIT_S,
) -> dict[str, Any]:
    shape = FLEETS[fleet]
    catalog = load_catalog()
    requests = select(read_trace(TRACE), limit=limit, speedup=rate)
    config = FleetConfig(
        replicas=shape.replicas,
        core=CoreConfig(tp=shape.tp),
        gate=GatewayGate(max_in_flight=max_in_flight, max_wait_s=max_wait_s),
    )
    sim = Fleet(catalog.model(shape.model), catalog.gpu(shape.gpu), config, _router(policy, shape, gateways))
    result = sim.run(arrivals(requests))
    where = {
        "fleet": fleet,
        "policy": policy,
        "rate": rate,
        "gateways": gateways,
        "max_in_flight": max_in_flight,
        "max_wait_s": max_wait_s,
        "gate_capacity_end": sim.gate_capacity,  # over the fleet, once the trace is done
    }
    return where | figures(result)


def figures(result: FleetResult) -> dict[str, Any]:
    done = [r for r in result.records if r.ok and r.first_token_s is not None and r.finish_s is not None]
    ttft = [r.first_token_s - r.arrival_s for r in done if r.first_token_s is not None]
    tpot = [
        (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
        for r in done
        if r.output_tokens > 1 and r.finish_s is not None and r.first_token_s is not None
    ]
    e2e = [r.finish_s - r.arrival_s for r in done if r.finish_s is not None]
    statuses: dict[str, int] = {}
    for r in result.records:
        if not r.ok:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    totals = result.totals
    span = totals.makespan_s or 1.0
    out = {
        "requests": totals.requests,
        "completed": totals.completed,
        "failed": totals.failed,
        "statuses": statuses,
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else None,
        "throughput_rps": totals.completed / span,
        "output_tok_s": sum(r.output_tokens for r in done) / span,
        "prefix_hit_rate": totals.prefix_hit_rate,
        "gpu_busy": totals.gpu_busy,
        "preemptions": totals.preemptions,
        "e2e_max_s": max(e2e) if e2e else None,
    }
    for p in (50, 90, 99):
        out[f"ttft_p{p}_s"] = percentile(ttft, p)
    for p in (50, 90):
        out[f"tpot_p{p}_s"] = percentile(tpot, p)
    return out


def meets_slo(row: dict[str, Any], ttft_slo_s: float = TTFT_SLO_S) -> bool:
    """p90 TTFT and TPOT within bounds, and not one request failed."""
    ttft, tpot = row["ttft_p90_s"], row["tpot_p90_s"]
    return bool(row["failed"] == 0 and ttft is not None and ttft <= ttft_slo_s and (tpot or 0) <= TPOT_SLO_S)


def capacity(rows: Sequence[dict[str, Any]], ttft_slo_s: float = TTFT_SLO_S) -> float | None:
    """The highest rate at which this policy and every lower rate met the SLO (None: not even the lowest)."""
    best = None
    for row in sorted(rows, key=lambda r: r["rate"]):
        if not meets_slo(row, ttft_slo_s):
            break
        best = row["rate"]
    return best


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:,.0f}"


def table(rows: Sequence[dict[str, Any]], ttft_slo_s: float = TTFT_SLO_S) -> str:
    lines = [
        "| fleet | policy | rate | TTFT mean / p50 / p90 / p99 ms | TPOT p50 / p90 ms | req/s | out tok/s "
        "| hit rate | failed (status) | SLO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttft = " / ".join(_ms(r[k]) for k in ("ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s"))
        tpot = " / ".join(_ms(r[k]) for k in ("tpot_p50_s", "tpot_p90_s"))
        failed = ", ".join(f"{n} x {s}" for s, n in r["statuses"].items()) or "0"
        lines.append(
            f"| {r['fleet']} | {r['policy']} | {r['rate']:g}x | {ttft} | {tpot} | {r['throughput_rps']:.2f} "
            f"| {r['output_tok_s']:,.0f} | {r['prefix_hit_rate'] * 100:.1f} % | {failed} "
            f"| {'ok' if meets_slo(r, ttft_slo_s) else 'miss'} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[dict[str, Any]], ideal: float, ttft_slo_s: float = TTFT_SLO_S) -> str:
    lines = [
        "| fleet | policy | SLO capacity | hit rate at 1x | of oracle | ideal |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["fleet"], r["policy"]) for r in rows}, key=lambda k: (k[0], _ORDER.get(k[1], 99)))
    for fleet, policy in keys:
        mine = [r for r in rows if r["fleet"] == fleet and r["policy"] == policy]
        cap = capacity(mine, ttft_slo_s)
        at1 = next((r["prefix_hit_rate"] for r in mine if r["rate"] == 1), None)
        oracle = next(
            (
                r["prefix_hit_rate"]
                for r in rows
                if r["fleet"] == fleet and r["policy"] == "oracle" and r["rate"] == 1
            ),
            None,
        )
        share = f"{at1 / oracle * 100:.0f} %" if at1 is not None and oracle else "—"
        lines.append(
            f"| {fleet} | {policy} | {'< lowest' if cap is None else f'{cap:g}x'} "
            f"| {'—' if at1 is None else f'{at1 * 100:.1f} %'} | {share} | {ideal * 100:.1f} % |"
        )
    return "\n".join(lines)


_ORDER = {
    p: i
    for i, p in enumerate(
        ["random", "round-robin", "least-request", "power-of-two", "prefix", "precise-prefix", "oracle"]
    )
}


def _saved_rows(path: Path) -> list[dict[str, Any]]:
    """Rows from an `--out` file, or the JSON lines a run prints to stderr as it goes."""
    text = path.read_text()
    if text.lstrip().startswith('{"ideal_hit_rate"'):
        rows: list[dict[str, Any]] = json.loads(text)["rows"]
        return rows
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def plot(rows: Sequence[dict[str, Any]], path: Path, ttft_slo_s: float = TTFT_SLO_S) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleets = sorted({r["fleet"] for r in rows})
    fig, axes = plt.subplots(1, len(fleets), figsize=(6 * len(fleets), 4), squeeze=False)
    for ax, fleet in zip(axes[0], fleets, strict=True):
        for policy in sorted(
            {r["policy"] for r in rows if r["fleet"] == fleet}, key=lambda p: _ORDER.get(p, 99)
        ):
            mine = sorted(
                (r for r in rows if r["fleet"] == fleet and r["policy"] == policy), key=lambda r: r["rate"]
            )
            ax.plot([r["rate"] for r in mine], [r["ttft_p90_s"] or 0 for r in mine], marker="o", label=policy)
        ax.axhline(ttft_slo_s, color="grey", linestyle="--", linewidth=1)
        ax.set(
            title=f"{fleet}: p90 TTFT by arrival rate",
            xlabel="trace speed-up",
            ylabel="p90 TTFT (s)",
            yscale="log",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fleets", default="70b-tp4,8b")
    parser.add_argument("--rates", type=listed(positive(float)), default="0.5,0.75,1,1.5,2,3,4")
    parser.add_argument("--policies", default="random,round-robin,least-request,prefix,precise-prefix,oracle")
    parser.add_argument(
        "--gateways", type=positive(int), default=1, help="gateway replicas the requests alternate over"
    )
    parser.add_argument(
        "--max-in-flight",
        type=max_in_flight,
        default=MAX_IN_FLIGHT,
        help=f"the gateway's maxInFlight per replica, or auto: sized from the KV cache ({MAX_IN_FLIGHT})",
    )
    parser.add_argument(
        "--max-wait",
        type=positive(float),
        default=MAX_WAIT_S,
        help=f"the gate's queue timeout, s ({MAX_WAIT_S:g})",
    )
    parser.add_argument(
        "--limit", type=positive(int), default=None, help="only the first N requests (quick runs)"
    )
    parser.add_argument(
        "--ttft-slo", type=positive(float), default=TTFT_SLO_S, help="p90 TTFT bound in seconds (2)"
    )
    parser.add_argument("--jobs", type=positive(int), default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--rows", type=Path, nargs="*", default=[], help="summarise rows saved by earlier runs instead"
    )
    parser.add_argument("--plot", type=Path, help="write p90 TTFT against rate as a PNG here")
    args = parser.parse_args()
    fleets, policies, rates = args.fleets.split(","), args.policies.split(","), args.rates
    unknown = [f for f in fleets if f not in FLEETS]
    if unknown:
        parser.error(f"--fleets: unknown {unknown}; choose from {', '.join(FLEETS)}")
    known = {"oracle", *router_factories("")}
    if bad := [p for p in policies if p not in known]:
        parser.error(f"--policies: unknown {bad}; choose from {', '.join(sorted(known))}")
    if missing := [str(path) for path in args.rows if not path.is_file()]:
        parser.error(f"--rows: no file at {', '.join(missing)}")
    if args.rows:
        saved = [row for path in args.rows for row in _saved_rows(path)]
        rows = [r for r in saved if r["fleet"] in fleets and r["policy"] in policies and r["rate"] in rates]
    else:
        rows = []
        jobs = [
            (f, p, r, args.limit, args.gateways, args.max_in_flight, args.max_wait)
            for f in fleets
            for p in policies
            for r in rates
        ]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for row in pool.map(run_one, *zip(*jobs, strict=True)):
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)  # progress, and the rows if the run dies
    ideal = ideal_hit_rate(select(read_trace(TRACE), limit=args.limit))
    print(
        f"# {date.today()} · {platform.machine()} · Python {platform.python_version()} · "
        f"{' '.join(sys.argv[1:])}"
    )
    print(summary(rows, ideal, args.ttft_slo))
    print()
    print(table(rows, args.ttft_slo))
    if args.out:
        args.out.write_text(json.dumps({"ideal_hit_rate": ideal, "rows": rows}, indent=1))
    if args.plot:
        plot(rows, args.plot, args.ttft_slo)


if __name__ == "__main__":
    main()
