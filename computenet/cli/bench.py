"""`computenet bench …`: workload tools that need no control plane.

`bench replay` sends a recorded or generated trace to any OpenAI-compatible
endpoint in real time and prints the latency summary; `bench synth` writes a
seeded synthetic trace in Mooncake's format. Both fail with one `error:` line
and exit 2 on bad input, so scripts can tell a bad flag from a bad server (1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from computenet.workloads import (
    LengthDist,
    ReplayError,
    TraceError,
    TraceRequest,
    active_span_s,
    cached_hit_rate,
    discover_model,
    gamma,
    render_table,
    replay,
    summarize,
    write_mooncake,
)
from computenet.workloads.replay import DEFAULT_TIMEOUT_S

from .traceargs import BadInput, add_trace_arguments, duration_s, error, parse_number, selected_requests


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `bench` and its subcommands; `add` is main's subparser factory (global flags included)."""
    bench = add("bench", help="replay or generate request traces (needs no control plane)")
    commands = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    _add_replay(commands.add_parser("replay", help="replay a trace against an OpenAI-compatible endpoint"))
    _add_synth(commands.add_parser("synth", help="write a synthetic trace (Mooncake JSONL)"))


def _add_replay(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.add_argument(
        "--target", required=True, metavar="URL", help="server base URL, e.g. http://host:8000"
    )
    parser.add_argument("--model", help="model to request (default: the first of GET /v1/models)")
    parser.add_argument("--api", choices=["completions", "chat"], default="completions")
    parser.add_argument("--timeout", default=str(DEFAULT_TIMEOUT_S), metavar="S", help="per request, seconds")
    parser.add_argument("--api-key", help="sent as `Authorization: Bearer KEY`")
    parser.add_argument(
        "--no-vllm-extras",
        action="store_true",
        help="omit min_tokens and ignore_eos (for servers that reject them, such as OpenAI's)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(run=run_replay)


def _add_synth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson")
    parser.add_argument("--rate", required=True, metavar="R", help="mean requests per second")
    parser.add_argument("--cv", default="1", metavar="C", help="gamma: coefficient of variation of gaps")
    parser.add_argument("--count", required=True, metavar="N", help="number of requests")
    parser.add_argument("--input-tokens", required=True, metavar="N", help="prompt tokens (mean)")
    parser.add_argument("--output-tokens", required=True, metavar="N", help="output tokens (mean)")
    parser.add_argument(
        "--length-cv",
        default="0",
        metavar="C",
        help="lognormal spread of lengths (0: every request the same)",
    )
    parser.add_argument("--seed", default="0", metavar="S")
    parser.add_argument("--prefix-groups", default="0", metavar="G", help="number of shared prompt prefixes")
    parser.add_argument(
        "--shared-prefix-tokens",
        default="0",
        metavar="T",
        help="length of each shared prefix, a multiple of 512, added before the --input-tokens",
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the JSONL")
    parser.set_defaults(run=run_synth)


def run_replay(args: argparse.Namespace) -> int:
    try:
        requests = selected_requests(args)
        timeout_s = parse_number("--timeout", args.timeout, float)
    except (BadInput, TraceError) as exc:
        return error(str(exc), 2)
    try:
        summary = asyncio.run(_replay(args, requests, timeout_s, duration_s(args)))
    except ReplayError as exc:
        return error(str(exc), 1)
    print(json.dumps(summary, indent=2) if args.json else render_table(summary))
    return 0


async def _replay(
    args: argparse.Namespace, requests: list[TraceRequest], timeout_s: float, duration_s: float | None
) -> dict[str, Any]:
    """Replay in real time; `duration_s` also stops sending when the client falls behind schedule."""
    model = await discover_model(args.target, model=args.model, api_key=args.api_key)
    if not args.json:
        span_s = requests[-1].arrival_s
        print(
            f"replaying {len(requests)} requests over {span_s:.1f} s to {args.target} ({model})",
            file=sys.stderr,
        )
    start = time.perf_counter()
    results = await replay(
        requests,
        target=args.target,
        model=model,
        api=args.api,
        api_key=args.api_key,
        timeout_s=timeout_s,
        duration_s=duration_s,
        vllm_extras=not args.no_vllm_extras,
    )
    extra = {"model": model, "max_send_lag_s": max((r.send_lag_s for r in results), default=0.0)}
    return summarize(
        results,
        duration_s=active_span_s(results),
        wall_s=time.perf_counter() - start,
        prefix_hit_rate=cached_hit_rate(results),
        extra=extra,
    )


def run_synth(args: argparse.Namespace) -> int:
    try:
        requests = _synthetic(args)
        write_mooncake(requests, args.output)
    except (BadInput, ValueError) as exc:
        return error(str(exc), 2)
    except OSError as exc:
        return error(f"cannot write {args.output}: {exc.strerror or exc}", 2)
    span_s = requests[-1].arrival_s if requests else 0.0
    print(f"wrote {len(requests)} requests over {span_s:.1f} s to {args.output}")
    return 0


def _synthetic(args: argparse.Namespace) -> list[TraceRequest]:
    length_cv = parse_number("--length-cv", args.length_cv, float, allow_zero=True)
    input_tokens = _length(parse_number("--input-tokens", args.input_tokens, int), length_cv)
    output_tokens = _length(parse_number("--output-tokens", args.output_tokens, int), length_cv)
    return gamma(
        parse_number("--rate", args.rate, float),
        parse_number("--cv", args.cv, float) if args.arrival == "gamma" else 1.0,
        parse_number("--count", args.count, int),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        seed=parse_number("--seed", args.seed, int, allow_zero=True),
        prefix_groups=parse_number("--prefix-groups", args.prefix_groups, int, allow_zero=True),
        shared_prefix_tokens=parse_number(
            "--shared-prefix-tokens", args.shared_prefix_tokens, int, allow_zero=True
        ),
    )


def _length(mean: int, cv: float) -> int | LengthDist:
    return mean if cv == 0 else LengthDist(mean, cv)
