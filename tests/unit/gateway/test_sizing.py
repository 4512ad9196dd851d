"""`--max-in-flight auto`: the gate sized from the engines' KV caches and the typical request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from computenet.cli.gateway import build_app
from computenet.engines import EngineLoad
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.engines.sizing import DEFAULT_PER_REPLICA, TypicalRequest, kv_slots, parse_max_in_flight
from computenet.gateway import GatewayApp
from computenet.gateway.registry import Upstream
from computenet.gateway.routing.signals import SignalBoard
from computenet.gateway.sizing import AutoCapacity
from computenet.gateway.upstream import Origin

from ..servers import serve

# --- the rule ------------------------------------------------------------------------------------------


def test_the_typical_request_is_the_mean_at_first_then_a_moving_average() -> None:
    assert TypicalRequest().tokens is None  # nothing finished yet
    typical = TypicalRequest(window=4)
    for tokens in (100, 300):
        typical.observe(tokens)
    assert typical.tokens == 200  # the plain mean: the first request has no made-up start to move from
    typical.observe(0)  # no usage: tells nothing
    assert (typical.seen, typical.tokens) == (2, 200)
    for _ in range(40):
        typical.observe(1000)
    assert typical.tokens == pytest.approx(1000, rel=1e-4)  # old sizes fade out


def test_a_replica_holds_its_kv_tokens_over_the_typical_request_at_least_one() -> None:
    assert kv_slots(508_000, 12_400) == 40  # the 70B replica of docs/benchmarks.md
    assert kv_slots(1000, 5000) == 1  # a request larger than the cache still gets through, alone
    assert kv_slots(0, 500) == DEFAULT_PER_REPLICA  # the engine did not say
    assert kv_slots(1000, None) == DEFAULT_PER_REPLICA  # nothing finished yet


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), (" AUTO ", "auto"), ("40", 40), (8, 8)])
def test_max_in_flight_is_auto_or_a_positive_integer(text: str | int, value: object) -> None:
    assert parse_max_in_flight("--max-in-flight", text) == value


@pytest.mark.parametrize("text", ["0", "-3", "4.5", "x", "", "²", 0])
def test_a_bad_max_in_flight_names_the_flag(text: str | int) -> None:
    with pytest.raises(ValueError, match="--max-in-flight must be a positive integer or auto"):
        parse_max_in_flight("--max-in-flight", text)


# --- per model, over its endpoints -----------------------------------------------------------------------


def upstreams(*replicas: str) -> tuple[Upstream, ...]:
    origin = Origin.parse("http://127.0.0.1:9")
    return tuple(Upstream(r, origin, "deployment/d", r, "", engine="sim") for r in replicas)


def test_a_models_capacity_is_the_sum_over_its_endpoints_with_the_default_where_unknown() -> None:
    board = SignalBoard()
    sizing = AutoCapacity(board)
    both = (upstreams("a", "b"),)
    assert sizing.capacity("m", both) == 2 * DEFAULT_PER_REPLICA  # no request finished yet
    sizing.observe("m", 250)
    assert sizing.capacity("m", both) == 2 * DEFAULT_PER_REPLICA  # no KV size scraped yet
    board.record_scrape("a", EngineLoad(kv_capacity_tokens=1000))
    assert sizing.capacity("m", both) == 4 + DEFAULT_PER_REPLICA  # b still unknown
    board.record_scrape("b", EngineLoad(kv_capacity_tokens=2000))
    assert sizing.capacity("m", both) == 4 + 8
    assert sizing.capacity("m", (upstreams("a"),)) == 4  # b left the model
    assert sizing.capacity("m", ()) == 0  # no endpoint: nothing to admit to, as with a number
    assert sizing.capacity("other", both) == 2 * DEFAULT_PER_REPLICA  # its own typical request


def test_the_typical_request_is_followed_without_recomputing_on_every_request() -> None:
    board = SignalBoard()
    board.record_scrape("a", EngineLoad(kv_capacity_tokens=10_000))
    sizing = AutoCapacity(board, refresh_every=16)
    endpoints = (upstreams("a"),)
    sizing.observe("m", 100)
    assert sizing.capacity("m", endpoints) == 100
    seen = 1
    for _ in range(40):  # requests grow to 500 tokens; the gate follows, in steps
        sizing.observe("m", 500)
        seen += 1
        capacity = sizing.capacity("m", endpoints)
    assert capacity < 30 and seen == 41
    assert sizing.typical_tokens()["m"] == pytest.approx(490.2, rel=0.01)


# --- a gateway in front of real sims ---------------------------------------------------------------------

KV_BLOCKS = 64  # x 16 tokens: a cache of 1,024 tokens per sim
OUTPUT_TOKENS = 48


@dataclass
class Gated:
    client: httpx.AsyncClient
    metrics: httpx.AsyncClient

    async def gauge(self, name: str) -> float:
        text = (await self.metrics.get("/metrics")).text
        line = next((x for x in text.splitlines() if x.startswith(f'{name}{{model="m"}}')), None)
        return float(line.split()[-1]) if line else 0.0

    async def ask(self) -> httpx.Response:
        body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": OUTPUT_TOKENS}
        return await self.client.post("/v1/chat/completions", json=body)


PROMPT = " ".join(f"word{i}" for i in range(60))


@contextlib.asynccontextmanager
async def auto_gated(queue_size: int) -> AsyncIterator[Gated]:
    """Two sims with small KV caches behind `computenet gateway --engine sim --max-in-flight auto`."""
    async with contextlib.AsyncExitStack() as stack:
        urls = []
        for _ in range(2):
            sim = create_sim_app(SimConfig(model="m", time_scale=0.2, num_gpu_blocks_override=KV_BLOCKS))
            await stack.enter_async_context(sim.router.lifespan_context(sim))
            urls.append(await stack.enter_async_context(serve(sim)))
        settings = {"model": "m", "upstream": ",".join(urls), "engine": "sim", "max_in_flight": "auto"}
        app: GatewayApp = build_app({**settings, "queue_size": queue_size, "queue_timeout": 60.0})
        await app.gw.start()
        stack.push_async_callback(app.gw.close)
        url = await stack.enter_async_context(serve(app))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60))
        metrics = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        board = app.gw.routing.board
        async with asyncio.timeout(5):  # both scraped: their KV sizes known
            while not all(board.engine(f"upstream-{i}") for i in range(2)):
                await asyncio.sleep(0.01)
        yield Gated(client, metrics)


async def test_auto_admits_what_each_kv_cache_holds_and_queues_the_rest() -> None:
    """Each sim's cache holds 1,024 tokens and a request ~114 (a 60-word prompt, 48 tokens out), so
    the gate admits 1024 // 114 = 8 per sim, 16 in all; of a burst of 22 the other 6 wait at the
    gateway (4 in its queue, 2 turned away with 429) rather than pile onto the engines."""
    async with auto_gated(queue_size=4) as gated:
        warm = await asyncio.gather(*(gated.ask() for _ in range(4)))  # the typical request, measured
        assert all(r.status_code == 200 for r in warm)
        # sized when they were admitted, with nothing finished yet: the default
        assert await gated.gauge("computenet_gateway_admission_capacity") == 2 * DEFAULT_PER_REPLICA
        usage = warm[0].json()["usage"]
        typical = usage["prompt_tokens"] + usage["completion_tokens"]
        assert await gated.gauge("computenet_gateway_typical_request_tokens") == typical
        per_sim = KV_BLOCKS * 16 // typical
        assert 5 <= per_sim <= 12  # small numbers, far below the default of 64

        burst = [asyncio.create_task(gated.ask()) for _ in range(2 * per_sim + 6)]
        async with asyncio.timeout(30):  # the gate fills, then its queue; nothing else reaches the sims
            while await gated.gauge("computenet_gateway_queue_length") < 4:
                await asyncio.sleep(0.01)
        assert await gated.gauge("computenet_gateway_admission_capacity") == 2 * per_sim
        assert await gated.gauge("computenet_gateway_in_flight_requests") == 2 * per_sim
        statuses = sorted(r.status_code for r in await asyncio.gather(*burst))
        assert statuses == [200] * (2 * per_sim + 4) + [429] * 2
