"""How fast the fleet simulator replays an hour of traffic, and what each router makes of it.

    .venv/bin/python benchmarks/sim_fleet.py [--replicas 16] [--routers least_outstanding,prefix_load]
                                             [--trace data/traces/mooncake_conversation.jsonl] [--json]

Replays the whole Mooncake conversation trace (12,031 requests over ~59 minutes)
through N simulated replicas of Llama-3.1-8B on H100 on the virtual clock, once
per router, through the same router table as `computenet sim replay` (so
`least_outstanding` is the gateway's policy). Reports the wall time of the
simulation itself (reading the trace is not counted), the speed-up over real
time (virtual makespan / wall), and the fleet's figures: prefix hit rate, GPU
busy share, TTFT. Prints one markdown row per router, then the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from computenet.cli.sim_replay import arrivals
from computenet.cli.sim_routing import make_router
from computenet.engines.sim.catalog import load_catalog
from computenet.engines.sim.fleet import FleetConfig, simulate
from computenet.workloads import TraceRequest, percentile, read_trace

ROOT = Path(__file__).resolve().parent.parent
HEADER = (
    "| router | replicas | requests | virtual s | wall s | speed-up | prefix hit rate | GPU busy "
    "| TTFT p50 ms | TTFT p99 ms | preemptions |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def replay(requests: Sequence[TraceRequest], router: str, args: argparse.Namespace) -> dict[str, Any]:
    catalog = load_catalog()
    model, gpu = catalog.model(args.model), catalog.gpu(args.gpu)
    config = FleetConfig(replicas=args.replicas)
    start = time.perf_counter()
    result = simulate(arrivals(requests), model, gpu, config, make_router(router, model=args.model))
    wall_s = time.perf_counter() - start
    totals = result.totals
    ttfts = [r.first_token_s - r.arrival_s for r in result.records if r.first_token_s is not None]
    return {
        "router": router,
        "replicas": args.replicas,
        "gpu": args.gpu,
        "model": args.model,
        "requests": totals.requests,
        "completed": totals.completed,
        "virtual_s": round(totals.makespan_s, 1),
        "wall_s": round(wall_s, 2),
        "speedup": round(totals.makespan_s / wall_s, 1),
        "prefix_hit_rate": round(totals.prefix_hit_rate, 4),
        "gpu_busy": round(totals.gpu_busy, 4),
        "ttft_p50_ms": round((percentile(ttfts, 50) or 0.0) * 1000, 1),
        "ttft_p99_ms": round((percentile(ttfts, 99) or 0.0) * 1000, 1),
        "preemptions": totals.preemptions,
        "steps": totals.steps,
        "python": platform.python_version(),
    }


def row(result: dict[str, Any]) -> str:
    cells = [
        result["router"],
        result["replicas"],
        result["requests"],
        f"{result['virtual_s']:.0f}",
        f"{result['wall_s']:.1f}",
        f"{result['speedup']:.0f}x",
        f"{result['prefix_hit_rate'] * 100:.1f} %",
        f"{result['gpu_busy'] * 100:.0f} %",
        result["ttft_p50_ms"],
        result["ttft_p99_ms"],
        result["preemptions"],
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trace", type=Path, default=ROOT / "data" / "traces" / "mooncake_conversation.jsonl"
    )
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--routers", default="least_outstanding,prefix_load")
    parser.add_argument("--gpu", default="H100")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--limit", type=int, default=None, help="only the first N requests (quick runs)")
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()
    requests = read_trace(args.trace)[: args.limit]
    results = [replay(requests, router, args) for router in args.routers.split(",")]
    if not args.json:
        print(HEADER)
        for result in results:
            print(row(result))
        print()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
