"""`computenet sim …`: a trace through a simulated fleet of engine replicas, on a virtual clock.

Answers "what would N replicas of this model on these GPUs, routed this way, do
with this traffic?" in seconds rather than the trace's hours. Only the parser
lives here: every `computenet` command builds it, so the simulator and the
gateway's policies are imported only when `sim replay` runs (`sim_replay`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from computenet.api.routing import DEFAULT_PRESET

from .traceargs import add_trace_arguments

DEFAULT_ROUTER = DEFAULT_PRESET  # the gateway's default routing policy


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `sim` and its subcommands; `add` is main's subparser factory (global flags included)."""
    sim = add("sim", help="simulate a fleet of engine replicas on a virtual clock (no GPU needed)")
    commands = sim.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")
    _add_replay(commands.add_parser("replay", help="replay a trace through a simulated fleet"))


def _add_replay(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.add_argument("--replicas", default="1", metavar="N", help="engine replicas (default 1)")
    parser.add_argument("--gpu", default="H100", help="GPU type from the catalogue (default H100)")
    parser.add_argument("--model", default="llama-3.1-8b", help="model architecture (default llama-3.1-8b)")
    parser.add_argument("--tp", default="1", metavar="N", help="tensor-parallel GPUs per replica")
    parser.add_argument(
        "--router", default=DEFAULT_ROUTER, help=f"routing policy (default {DEFAULT_ROUTER}, the gateway's)"
    )
    parser.add_argument(
        "--catalog",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="extra GPUs and models (YAML)",
    )
    parser.add_argument("--max-num-seqs", default="256", metavar="N")
    parser.add_argument("--max-num-batched-tokens", default="8192", metavar="N")
    parser.add_argument("--gpu-memory-utilization", default="0.9", metavar="F")
    parser.add_argument("--no-prefix-caching", action="store_true", help="turn vLLM's prefix caching off")
    parser.add_argument(
        "--gateways", default="1", metavar="N", help="gateway replicas taking arrivals in turn (default 1)"
    )
    parser.add_argument(
        "--max-in-flight",
        metavar="N|auto",
        help="the gateway's admission gate: requests in flight per replica before the rest queue; auto: "
        "what a replica's KV cache holds of the typical finished request (default: no gate)",
    )
    parser.add_argument("--max-queue", default="1024", metavar="N", help="the gate's queue (default 1024)")
    parser.add_argument(
        "--max-wait", default="30", metavar="S", help="seconds a request may queue before 503 (default 30)"
    )
    parser.add_argument("--seed", default="0", metavar="S", help="seed of the random router")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    from .sim_replay import run_replay

    return run_replay(args)
