"""What one routing decision costs: picking among N endpoints with every filter and scorer on.

    .venv/bin/python benchmarks/routing_pick.py [--endpoints 64] [--blocks 128] [--picks 20000]
        [--rounds 5] [--preset NAME] [--without NAME,...]

The gateway decides once per request, on the event loop, so this is latency added
to every request and CPU taken from every other one. The state is a busy fleet:
every endpoint freshly scraped, with requests in flight, a KV-event index and an
approximate index holding a few thousand prompts spread over the endpoints, and a
few hundred sessions pinned. Each pick is a new request that shares its system
prompt with the indexed ones (so the prefix walks are long) and then diverges.
Prints the median of a pick (the median of the rounds' medians, and each round's), its p99,
and the median and p99 of `routed` (the bookkeeping after it).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from gateway.flags import positive

from computenet.api import PolicySpec
from computenet.api.routing import LEGACY_PRESETS
from computenet.engines.base import EngineLoad
from computenet.gateway.routing.kv_index import KVBlockIndex
from computenet.gateway.routing.pipeline import RoutingRequest, RoutingState
from computenet.gateway.routing.prefix import ApproxPrefixIndex
from computenet.gateway.routing.presets import PRESETS, build_pipeline
from computenet.gateway.routing.scorers import FILTERS, SCORERS

ALL_ON: dict[str, list[dict[str, Any]]] = {
    "filters": [
        {"name": "saturation", "maxWaiting": 1000, "maxKvUsage": 0.999},
        {"name": "region"},  # requests name no region: it keeps every replica
    ],
    "scorers": [
        {"name": "precise-prefix", "weight": 2},
        {"name": "prefix", "weight": 1},
        {"name": "prefill-load", "weight": 1},
        {"name": "queue", "weight": 1},
        {"name": "kv-usage", "weight": 1},
        {"name": "least-request", "weight": 1},
        {"name": "lora", "weight": 1},
        {"name": "session", "weight": 1},
        {"name": "region", "weight": 1},
    ],
}


@dataclass(frozen=True, slots=True)
class Ep:
    replica: str
    region: str
    engine: str = "sim"


def own_block(prompt: int, block: int) -> int:
    """A block hash as the gateway computes them (chained, 64-bit ints), distinct per prompt."""
    return (prompt << 20) | block


def build_state(endpoints: tuple[Ep, ...], blocks: int, rng: random.Random) -> RoutingState:
    kv = KVBlockIndex()
    state = RoutingState(kv=kv, approx=ApproxPrefixIndex(), rng=rng)
    for ep in endpoints:
        load = EngineLoad(
            running=rng.randrange(64), waiting=rng.randrange(8), kv_cache_usage=rng.random() * 0.9, max_lora=4
        )
        state.board.record_scrape(ep.replica, load)
        for _ in range(rng.randrange(32)):
            state.board.acquire(ep.replica)
    for prompt in range(4000):  # a shared system prompt (block 0..15), then each prompt's own blocks
        owner = endpoints[prompt % len(endpoints)].replica
        hashes = list(range(16)) + [own_block(prompt, b) for b in range(16, blocks)]
        kv.store(owner, hashes)
        state.approx.record(owner, hashes)
    for session in range(300):
        state.sessions.pin(f"s{session}", endpoints[session % len(endpoints)].replica)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=positive(int), default=64)
    parser.add_argument(
        "--blocks", type=positive(int), default=128, help="prompt length in KV blocks (16 tokens each)"
    )
    parser.add_argument("--picks", type=positive(int), default=20000)
    parser.add_argument(
        "--rounds",
        type=positive(int),
        default=5,
        help="split the picks into this many rounds and report the median of their medians, with "
        "the spread: a shared VM's neighbours move a single median by 5-10%%",
    )
    parser.add_argument(
        "--preset",
        choices=[*PRESETS, *LEGACY_PRESETS],
        help="time this preset instead of every filter and scorer at once",
    )
    parser.add_argument(
        "--without",
        default="",
        metavar="NAME,...",
        help="leave out these filters and scorers, to compare with figures from before they existed "
        "(`region`, both a filter and a scorer, leaves out both)",
    )
    args = parser.parse_args()
    rng = random.Random(0)
    # a tuple, as the forwarder hands a route's upstreams to the policy on every request
    endpoints = tuple(Ep(f"ep-{i}", f"r{i % 4}") for i in range(args.endpoints))
    state = build_state(endpoints, args.blocks, rng)
    gc.collect()
    gc.freeze()  # as the gateway does at startup: long-lived state stays out of the collector's passes
    named = {step["name"] for step in ALL_ON["filters"] + ALL_ON["scorers"]}
    left_out = (set(FILTERS) | set(SCORERS)) - named
    if left_out:
        parser.error(f"ALL_ON lacks {', '.join(sorted(left_out))}: add them, the figure is for every one")
    without = set(filter(None, args.without.split(",")))
    if without - named:
        parser.error(f"--without: no filter or scorer named {', '.join(sorted(without - named))}")
    policy = {kind: [s for s in steps if s["name"] not in without] for kind, steps in ALL_ON.items()}
    pipeline = build_pipeline(args.preset or PolicySpec.model_validate(policy))
    pick_s, routed_s, round_p50s = [], [], []
    per_round = max(1, args.picks // args.rounds)
    for n in range(args.picks):
        prompt = n % 4000
        blocks = list(range(16)) + [own_block(prompt, b) for b in range(16, args.blocks // 2)] + [-1 - n]
        request = RoutingRequest(
            model="m",
            session=f"s{n % 600}",
            text_blocks=blocks,
            engine_blocks={"sim": blocks},
        )
        t0 = time.perf_counter()
        chosen = pipeline.pick(request, endpoints, state)
        t1 = time.perf_counter()
        assert chosen is not None
        pipeline.routed(request, chosen, state)
        t2 = time.perf_counter()
        pick_s.append(t1 - t0)
        routed_s.append(t2 - t1)
        if (n + 1) % per_round == 0:
            round_p50s.append(statistics.median(pick_s[-per_round:]) * 1e6)
    pick_s.sort()
    routed_s.sort()
    result = {
        "policy": args.preset or "all filters and scorers" + (f" but {args.without}" if without else ""),
        "endpoints": args.endpoints,
        "prompt_blocks": args.blocks // 2 + 1,
        "picks": args.picks,
        "pick_p50_us": round(statistics.median(round_p50s), 1),
        "pick_p50_rounds_us": [round(v, 1) for v in round_p50s],
        "pick_p99_us": round(pick_s[int(len(pick_s) * 0.99)] * 1e6, 1),
        "routed_p50_us": round(statistics.median(routed_s) * 1e6, 1),
        "routed_p99_us": round(routed_s[int(len(routed_s) * 0.99)] * 1e6, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
