"""Command line of `python -m computenet.engines.sim`.

Flags mirror vLLM's engine arguments (`--max-num-seqs`, `--gpu-memory-utilization`,
`--enable-prefix-caching`, ...), so a model's tuned args work on both; `--gpu`
and `--arch` say what the performance model simulates. Unknown flags, and ids the
catalogue does not know, fail at startup with exit status 2 and a message naming
the known ones, which the pool driver reports. `--kv-transfer-config` takes vLLM's
JSON (`{"kv_connector":"NixlConnector","kv_role":"kv_producer"}` for a prefill
replica, `kv_consumer` for a decode one, `kv_both` for either); `--kv-link-gbps`
is the sim's own: the per-GPU link a decode replica pulls KV over.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn

from .config import KV_EVENT_HASHES, SimConfig
from .engine import build_core
from .server import create_app
from .transfer import KVTransferConfig

GRACEFUL_SHUTDOWN_SECONDS = 5  # open streams get this long after SIGTERM


@dataclass(frozen=True)
class ServeOptions:
    config: SimConfig
    host: str
    port: int


def _at_least(minimum: float, cast: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = cast(text)
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _kv_transfer_config(text: str) -> KVTransferConfig:
    try:
        return KVTransferConfig.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m computenet.engines.sim",
        description="Simulated OpenAI-compatible LLM server: vLLM's scheduling, KV cache and timing "
        "for a model architecture on a GPU from the catalogue (no GPU, no weights).",
    )
    defaults = SimConfig(model="-")
    positive = _at_least(1, int)
    add = parser.add_argument
    add("--model", required=True, help="served model name")
    add("--host", default="127.0.0.1")
    add("--port", type=_at_least(0, int), default=8000)
    add("--gpu", default=defaults.gpu, help="simulated GPU, a catalogue id (default %(default)s)")
    add("--arch", default=defaults.arch, help="simulated model architecture id (default %(default)s)")
    add("--tp", type=positive, default=defaults.tp, help="tensor-parallel size")
    add("--gpu-memory-utilization", type=_fraction, default=defaults.gpu_memory_utilization)
    add("--max-num-seqs", type=positive, default=defaults.max_num_seqs)
    add("--max-num-batched-tokens", type=positive, default=defaults.max_num_batched_tokens)
    add("--block-size", type=positive, default=defaults.block_size)
    add("--num-gpu-blocks-override", type=positive, default=None)
    add("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    add("--max-model-len", type=positive, default=None, help="default: min(context, KV-cache capacity)")
    add("--default-max-tokens", type=positive, default=defaults.default_max_tokens)
    add("--catalog", type=Path, nargs="+", action="extend", default=[], help="extra catalogue YAML files")
    add("--kv-events-endpoint", default=None, help="bind a ZMQ PUB socket here for vLLM-style KV events")
    add(
        "--kv-events-replay-endpoint",
        default=None,
        help="bind vLLM's replay ROUTER socket here: subscribers fetch the batches they missed",
    )
    add(
        "--kv-events-hashes",
        choices=KV_EVENT_HASHES,
        default=defaults.kv_events_hashes,
        help="block hashes in KV events: the sim's own chain, which a router can compute from the "
        "prompt (default), or per-process seeded SHA-256 digests that it cannot, as vLLM's",
    )
    add(
        "--kv-transfer-config",
        type=_kv_transfer_config,
        default=None,
        help="vLLM's KV connector JSON for disaggregated prefill, e.g. "
        '\'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\' (kv_producer: prefill replica, '
        "kv_consumer: decode replica)",
    )
    add(
        "--kv-link-gbps",
        type=_positive_float,
        default=defaults.kv_link_gbps,
        help="GB/s (1e9 bytes/s) of the per-GPU link a decode replica pulls a prompt's KV over "
        "(default %(default)s: one 400 Gb/s RDMA NIC per GPU)",
    )
    add(
        "--time-scale",
        type=_positive_float,
        default=defaults.time_scale,
        help="divide every simulated step duration by this: 10 runs ten times faster than the "
        "simulated GPU while keeping relative timings; inf never waits (default %(default)s)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> ServeOptions:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kv_events_replay_endpoint is not None and args.kv_events_endpoint is None:
        parser.error("--kv-events-replay-endpoint needs --kv-events-endpoint")
    try:
        config = _sim_config(args)  # SimConfig's own checks, e.g. --kv-link-gbps inf
        build_core(config)  # unknown ids, no room for a KV cache, a context the cache cannot hold
    except ValueError as exc:
        parser.error(str(exc))
    if config.kv_transfer is not None:  # a prefill's answer names this replica as where its KV waits
        config = replace(config, kv_side_channel_host=str(args.host), kv_side_channel_port=int(args.port))
    return ServeOptions(config=config, host=args.host, port=int(args.port))


def _sim_config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=args.model,
        gpu=args.gpu,
        arch=args.arch,
        tp=int(args.tp),
        gpu_memory_utilization=float(args.gpu_memory_utilization),
        max_num_seqs=int(args.max_num_seqs),
        max_num_batched_tokens=int(args.max_num_batched_tokens),
        block_size=int(args.block_size),
        num_gpu_blocks_override=None
        if args.num_gpu_blocks_override is None
        else int(args.num_gpu_blocks_override),
        enable_prefix_caching=bool(args.enable_prefix_caching),
        max_model_len=None if args.max_model_len is None else int(args.max_model_len),
        default_max_tokens=int(args.default_max_tokens),
        catalog=tuple(args.catalog),
        kv_events_endpoint=args.kv_events_endpoint,
        kv_events_replay_endpoint=args.kv_events_replay_endpoint,
        kv_events_hashes=str(args.kv_events_hashes),
        time_scale=float(args.time_scale),
        kv_transfer=args.kv_transfer_config,
        kv_link_gbps=float(args.kv_link_gbps),
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    app = create_app(options.config)
    try:
        app.state.engine.bind_kv_events()
    except ValueError as exc:
        build_parser().error(str(exc))
    uvicorn.run(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
