"""`computenet sched …`: the GPU placement scheduler, offline.

`sched replay` runs the FGD paper's protocol (USENIX ATC'23) on an Alibaba `openb` node list and pod
list: pods sorted by name and shuffled with the seed, inflated to 130 % of GPU capacity, placed one at a
time, failures not retried. Only the parser lives here; the scheduler is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .traceargs import error

if TYPE_CHECKING:
    from computenet.scheduler.replay import ReplayResult

REPORT_PERCENTS = (80, 90, 95, 100)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `sched` and its subcommands; `add` is main's subparser factory."""
    sched = add("sched", help="the GPU placement scheduler, offline (trace replay)")
    commands = sched.add_subparsers(dest="sched_command", required=True, metavar="SUBCOMMAND")
    replay = commands.add_parser(
        "replay", help="replay an Alibaba GPU trace with a placement policy (the FGD paper's protocol)"
    )
    replay.add_argument("--nodes", type=Path, required=True, help="openb_node_list_*.csv (.gz too)")
    replay.add_argument("--pods", type=Path, required=True, help="openb_pod_list_*.csv (.gz too)")
    replay.add_argument(
        "--policy",
        default="computenet",
        help="random, dotprod, gpuclustering, gpupacking, "
        "bestfit, fgd (the paper's), computenet (our best), utilization, stability, cost",
    )
    replay.add_argument("--seed", type=int, default=42, help="shuffle and inflation seed (default: 42)")
    replay.add_argument("--inflate", type=float, default=1.3, help="workload as a multiple of GPU capacity")
    replay.add_argument("--out", type=Path, help="write one JSON line per pod here")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.set_defaults(run=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    from computenet.scheduler.policies import POLICIES
    from computenet.scheduler.replay import replay
    from computenet.scheduler.trace import TraceError, load_nodes, load_pods

    if args.policy not in POLICIES:
        return error(f"--policy {args.policy!r} is unknown; choose one of {', '.join(POLICIES)}", 2)
    if not 0 < args.inflate <= 10:
        return error(f"--inflate must be in (0, 10], got {args.inflate}", 2)
    try:
        inventory = load_nodes(args.nodes)
        pods = load_pods(args.pods)
    except TraceError as exc:
        return error(str(exc), 2)
    if not inventory.gpu_count:
        return error(f"--nodes {args.nodes}: no node has a GPU", 2)
    if not pods:
        return error(f"--pods {args.pods}: no pods (a header line and no rows)", 2)
    started = time.perf_counter()
    result = replay(inventory, pods, args.policy, seed=args.seed, inflate=args.inflate)
    wall_s = time.perf_counter() - started
    if args.out is not None:
        try:
            with args.out.open("w") as out:
                _write_placements(result, out)
        except OSError as exc:
            return error(f"--out {args.out}: {exc.strerror or exc}", 2)
    summary = _summary(result, wall_s)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


def _write_placements(result: ReplayResult, out: TextIO) -> None:
    names = result.state_names
    for pod, placement in zip(result.pods, result.placements, strict=True):
        line = {
            "pod": pod.name,
            "node": None if placement is None else names[placement.node],
            "gpus": [] if placement is None else list(placement.gpus),
            "num_gpu": pod.num_gpu,
            "gpu_milli": pod.gpu_milli,
            "cpu_milli": pod.cpu_milli,
            "memory_mib": pod.memory_mib,
        }
        out.write(json.dumps(line) + "\n")


def _summary(result: ReplayResult, wall_s: float) -> dict[str, Any]:
    unallocated = result.curve("unallocated")
    frag_rate = result.curve("frag_rate")
    decisions_ms = sorted(1000 * float(s) for s in result.decision_s)
    placed = sum(p is not None for p in result.placements)
    return {
        "policy": result.policy,
        "seed": result.seed,
        "pods": len(result.pods),
        "placed": placed,
        "failed": len(result.pods) - placed,
        "unallocated_gpu_pct": {
            str(p): round(unallocated[p], 3) for p in REPORT_PERCENTS if p in unallocated
        },
        "frag_rate_pct": {str(p): round(frag_rate[p], 3) for p in REPORT_PERCENTS if p in frag_rate},
        "decision_ms": {
            "p50": round(decisions_ms[len(decisions_ms) // 2], 3),
            "p99": round(decisions_ms[min(len(decisions_ms) - 1, int(0.99 * len(decisions_ms)))], 3),
        },
        "wall_s": round(wall_s, 2),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"policy {summary['policy']}, seed {summary['seed']}: {summary['pods']} pods, "
        f"{summary['placed']} placed, {summary['failed']} failed, {summary['wall_s']} s"
    )
    print(f"{'arrived GPU demand':>20} {'unallocated GPU %':>18} {'frag rate %':>12}")
    for percent in REPORT_PERCENTS:
        key = str(percent)
        if key in summary["unallocated_gpu_pct"]:
            print(
                f"{percent:>19}% {summary['unallocated_gpu_pct'][key]:>18.2f} "
                f"{summary['frag_rate_pct'][key]:>12.2f}"
            )
    ms = summary["decision_ms"]
    print(f"decision time per pod: p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms")
