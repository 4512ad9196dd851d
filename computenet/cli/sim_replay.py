"""`computenet sim replay`: replay a trace through a simulated fleet and print the summary.

The summary is the one `bench replay` prints for a real endpoint (same JSON,
same table), plus what only a simulator knows: GPU-busy share, virtual time,
preemptions. Bad input exits 2 with one `error:` line naming the flag or file,
before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from computenet.engines.sim.catalog import CatalogError, load_catalog
from computenet.engines.sim.core import CoreConfig, NotEnoughMemory
from computenet.engines.sim.fleet import (
    Arrival,
    Fleet,
    FleetConfig,
    FleetResult,
    GatewayGate,
    RequestRecord,
)
from computenet.engines.sizing import parse_max_in_flight
from computenet.workloads import (
    RequestResult,
    TraceError,
    TraceRequest,
    active_span_s,
    render_table,
    summarize,
)

from .sim_routing import make_router
from .traceargs import BadInput, error, parse_number, selected_requests

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Plan:
    """Everything a run needs, checked before the clock starts."""

    fleet: Fleet
    requests: list[TraceRequest]


def run_replay(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
    except (BadInput, TraceError, CatalogError) as exc:
        return error(str(exc), 2)
    if not args.json:
        span_s = plan.requests[-1].arrival_s
        print(f"simulating {len(plan.requests)} requests over {span_s:.1f} s", file=sys.stderr)
    start = time.perf_counter()
    result = plan.fleet.run(arrivals(plan.requests))
    summary = _summary(result, time.perf_counter() - start, args, plan.fleet.config)
    print(json.dumps(summary, indent=2) if args.json else render_table(summary))
    return 0


def _plan(args: argparse.Namespace) -> _Plan:
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        raise BadInput(f"--catalog: {exc}") from None
    gpu, model = _entry("--gpu", catalog.gpu, args.gpu), _entry("--model", catalog.model, args.model)
    core = _core_config(args)
    seed = parse_number("--seed", args.seed, int, allow_zero=True)
    gateways = parse_number("--gateways", args.gateways, int)
    try:
        router = make_router(args.router, model=args.model, seed=seed, gateways=gateways)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    config = FleetConfig(replicas=parse_number("--replicas", args.replicas, int), core=core, gate=_gate(args))
    try:
        fleet = Fleet(model, gpu, config, router)
    except NotEnoughMemory as exc:
        raise BadInput(f"--gpu {args.gpu}: {exc}") from None
    return _Plan(fleet, selected_requests(args))


def _gate(args: argparse.Namespace) -> GatewayGate | None:
    if args.max_in_flight is None:
        return None
    try:
        per_replica = parse_max_in_flight("--max-in-flight", args.max_in_flight)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return GatewayGate(
        max_in_flight=per_replica,
        max_queue=parse_number("--max-queue", args.max_queue, int, allow_zero=True),
        max_wait_s=parse_number("--max-wait", args.max_wait, float),
    )


def _entry(flag: str, lookup: Callable[[str], _T], key: str) -> _T:
    try:
        return lookup(key)
    except CatalogError as exc:
        raise BadInput(f"{flag}: {exc}") from None


def _core_config(args: argparse.Namespace) -> CoreConfig:
    utilization = parse_number("--gpu-memory-utilization", args.gpu_memory_utilization, float)
    if utilization > 1:
        raise BadInput(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization!r}")
    return CoreConfig(
        tp=parse_number("--tp", args.tp, int),
        gpu_memory_utilization=utilization,
        max_num_seqs=parse_number("--max-num-seqs", args.max_num_seqs, int),
        max_num_batched_tokens=parse_number("--max-num-batched-tokens", args.max_num_batched_tokens, int),
        enable_prefix_caching=not args.no_prefix_caching,
    )


def arrivals(requests: Sequence[TraceRequest]) -> Iterator[Arrival]:
    """Arrivals one at a time; the fleet expands each one's hash ids into block hashes when it arrives."""
    for request in requests:
        yield Arrival(
            request.arrival_s,
            request.input_tokens,
            request.output_tokens,
            request.hash_ids,
            request.hash_block_tokens,
        )


def _summary(
    result: FleetResult, wall_s: float, args: argparse.Namespace, config: FleetConfig
) -> dict[str, Any]:
    """`bench replay`'s document plus what only a simulator knows (GPU busy share, virtual time)."""
    totals = result.totals
    results = [_result(record) for record in result.records]
    extra = {
        "router": args.router,
        "gateways": int(args.gateways),
        "max_in_flight": config.gate.max_in_flight if config.gate else None,
        "replicas": config.replicas,
        "gpu": args.gpu,
        "model": args.model,
        "tp": config.core.tp,
        "gpu_busy": totals.gpu_busy,
        "virtual_s": totals.makespan_s,
        "sim_speedup": totals.makespan_s / wall_s if wall_s > 0 else None,  # virtual seconds per wall second
        "preemptions": totals.preemptions,
        "steps": totals.steps,
    }
    return summarize(
        results,
        duration_s=active_span_s(results),
        wall_s=wall_s,
        prefix_hit_rate=totals.prefix_hit_rate if totals.completed else None,
        extra=extra,
    )


def _result(record: RequestRecord) -> RequestResult:
    """A fleet record as a client would have seen it; inter-token gaps are not tracked in virtual time."""
    if not record.ok or record.first_token_s is None or record.finish_s is None:
        return RequestResult(
            False,
            None,
            None,
            0,
            error=record.error if record.status == 400 else f"HTTP {record.status}: {record.error}",
            prompt_tokens=record.prompt_tokens,
            sent_s=record.arrival_s,
        )
    return RequestResult(
        True,
        record.first_token_s - record.arrival_s,
        record.finish_s - record.arrival_s,
        record.output_tokens,
        prompt_tokens=record.prompt_tokens,
        sent_s=record.arrival_s,
        cached_tokens=record.cached_tokens,
    )
