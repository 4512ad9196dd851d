"""Precise prefix routing over replicas whose block hashes the gateway cannot compute, as vLLM's.

The replicas are real sim servers on 127.0.0.1 publishing KV events with per-process seeded
SHA-256 hashes (`--kv-events-hashes sha256`), declared to the gateway as `vllm`: it must
key their blocks by token ids and get each prompt's token ids from a replica's /tokenize,
exactly the path a vLLM fleet takes (no vLLM runs here: it needs a GPU).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from computenet.api import Endpoint
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.gateway import EndpointRegistry, Gateway, GatewayApp
from computenet.pools.processes import free_port, free_ports

from ..servers import serve
from .test_disagg import FirstOfTies

SYSTEM = " ".join(f"policy{i}" for i in range(150))


@dataclass
class Fleet:
    client: httpx.AsyncClient
    gateway: Gateway
    urls: dict[str, str]

    async def warm(self, replica: str, content: str) -> None:
        """Serve a conversation's earlier turn on `replica` directly, past the gateway."""
        async with httpx.AsyncClient(base_url=self.urls[replica]) as sim:
            body = {"model": "m", "messages": messages(content), "max_tokens": 1}
            assert (await sim.post("/v1/chat/completions", json=body)).status_code == 200

    async def indexed(self, replica: str, blocks: int) -> None:
        async with asyncio.timeout(5):
            while self.gateway.kv_index.blocks(replica) < blocks:
                await asyncio.sleep(0.02)

    def tokenized(self, outcome: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(
            "computenet_gateway_engine_tokenize_total", {"backend": "deployment/d", "outcome": outcome}
        )
        return value or 0.0


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@contextlib.asynccontextmanager
async def vllm_like_fleet(replicas: int, *, dead: tuple[str, ...] = ()) -> AsyncIterator[Fleet]:
    async with contextlib.AsyncExitStack() as stack:
        endpoints = []
        for i in range(replicas):
            name = f"r{i}"
            events, replay = (f"tcp://127.0.0.1:{port}" for port in free_ports(2))  # two at once: never equal
            config = SimConfig(
                model="m",
                time_scale=50,
                block_size=32,  # split into the gateway's 16-token keys
                kv_events_endpoint=events,
                kv_events_replay_endpoint=replay,
                kv_events_hashes="sha256",
            )
            app = create_sim_app(config)
            await stack.enter_async_context(app.router.lifespan_context(app))
            url = await stack.enter_async_context(serve(app))
            endpoints.append(
                Endpoint(name, "d", "m", url, engine="vllm", kv_events=events, kv_events_replay=replay)
            )
        for name in dead:
            url = f"http://127.0.0.1:{free_port()}"  # nobody listens: /tokenize there fails at once
            endpoints.append(
                Endpoint(name, "d", "m", url, engine="vllm", kv_events=f"tcp://127.0.0.1:{free_port()}")
            )
        registry = EndpointRegistry()
        await registry.publish("d", endpoints, model="m", policy="precise-prefix")
        gateway = Gateway(registry, scrape_interval_s=0.05)
        gateway.routing.rng = FirstOfTies()
        await gateway.start()
        stack.push_async_callback(gateway.close)
        url = await stack.enter_async_context(serve(GatewayApp(gateway)))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        async with asyncio.timeout(5):  # both scraped, so the load terms tie
            while not all(gateway.routing.board.engine(e.replica) for e in endpoints[:replicas]):
                await asyncio.sleep(0.01)
        yield Fleet(client, gateway, {e.replica: e.url for e in endpoints})


async def chat(fleet: Fleet, content: str, **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": messages(content), "max_tokens": 3, **extra}
    response = await fleet.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


async def test_a_conversation_goes_where_its_prefix_is_cached_though_the_hashes_are_opaque() -> None:
    """Ties go to r0, so r1 is chosen only because its cache holds the earlier turn."""
    async with vllm_like_fleet(2) as fleet:
        first_turn = "alpha " * 60
        await fleet.warm("r1", first_turn)
        await fleet.indexed("r1", 8)
        follow_up = await chat(fleet, first_turn + "and then?")
        assert follow_up.headers["x-computenet-replica"] == "r1"
        assert follow_up.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 8 * 16
        assert fleet.tokenized("ok") == 1
        feed = fleet.gateway.feeds.kv_events
        assert feed is not None and feed.stats.unkeyed_blocks == 0


async def test_a_completion_prompt_is_tokenized_and_matched_too() -> None:
    async with vllm_like_fleet(2) as fleet:
        prompt = SYSTEM + " beta" * 40
        async with httpx.AsyncClient(base_url=fleet.urls["r1"]) as sim:
            body = {"model": "m", "prompt": prompt, "max_tokens": 1}
            assert (await sim.post("/v1/completions", json=body)).status_code == 200
        await fleet.indexed("r1", 8)
        body = {"model": "m", "prompt": prompt + " gamma", "max_tokens": 2}
        response = await fleet.client.post("/v1/completions", json=body)
        assert response.headers["x-computenet-replica"] == "r1"


async def test_a_replica_that_cannot_tokenize_costs_the_precise_score_not_the_answer() -> None:
    """The gateway asks replicas to tokenize in turn; the dead one fails and the request is
    routed on load alone (and answered), the failure counted."""
    async with vllm_like_fleet(2, dead=("r2",)) as fleet:
        answered = [await chat(fleet, f"question {i}") for i in range(3)]
        assert all(r.headers["x-computenet-replica"] in ("r0", "r1") for r in answered)
        assert fleet.tokenized("error") >= 1
        assert fleet.tokenized("ok") >= 1
