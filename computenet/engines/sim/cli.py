"""Command line of `python -m computenet.engines.sim`.

Flags mirror vLLM's where vLLM has one (`--max-num-seqs`, `--max-model-len`),
so a model's tuned args work on both. Unknown flags fail at startup with
argparse's message and exit status 2, which the pool driver reports.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvicorn

from .config import SimConfig
from .server import create_app

GRACEFUL_SHUTDOWN_SECONDS = 5  # open streams get this long after SIGTERM


@dataclass(frozen=True)
class ServeOptions:
    config: SimConfig
    host: str
    port: int


def _at_least(minimum: float, cast: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = cast(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m computenet.engines.sim",
        description="Simulated OpenAI-compatible LLM server (no GPU, no weights).",
    )
    defaults = SimConfig(model="-")
    positive = _at_least(1, int)
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_at_least(0, int), default=8000)
    parser.add_argument("--max-num-seqs", type=positive, default=defaults.max_num_seqs)
    parser.add_argument("--ttft-ms", type=_at_least(0, float), default=defaults.ttft_ms)
    parser.add_argument("--tpot-ms", type=_at_least(0, float), default=defaults.tpot_ms)
    parser.add_argument("--kv-cache-tokens", type=positive, default=defaults.kv_cache_tokens)
    parser.add_argument("--max-model-len", type=positive, default=defaults.max_model_len)
    parser.add_argument("--default-max-tokens", type=positive, default=defaults.default_max_tokens)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> ServeOptions:
    args = build_parser().parse_args(argv)
    config = SimConfig(
        model=args.model,
        max_num_seqs=int(args.max_num_seqs),
        ttft_ms=float(args.ttft_ms),
        tpot_ms=float(args.tpot_ms),
        kv_cache_tokens=int(args.kv_cache_tokens),
        max_model_len=int(args.max_model_len),
        default_max_tokens=int(args.default_max_tokens),
    )
    return ServeOptions(config=config, host=args.host, port=int(args.port))


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    uvicorn.run(
        create_app(options.config),
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
