"""A prefill/decode deployment behind the gateway: real sim servers on loopback, each leg checked on its sim."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from computenet.api import Endpoint, PolicySpec, UsageRecord
from computenet.engines.base import EngineLoad
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.engines.sim.tokens import count_chat_tokens
from computenet.engines.sim.transfer import KVTransferConfig
from computenet.gateway import EndpointRegistry, Gateway, GatewayApp
from computenet.gateway.guards import Guards
from computenet.gateway.metering import UsageMeter
from computenet.gateway.routing.hashers import engine_block_hashes
from computenet.gateway.routing.pipeline import RoutingRequest
from computenet.pools.processes import free_port, free_ports

from ..servers import serve, serve_aiohttp

PRODUCER = KVTransferConfig(kv_role="kv_producer")
CONSUMER = KVTransferConfig(kv_role="kv_consumer")
SYSTEM = " ".join(f"rule{i}" for i in range(120))


class Sink:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        self.records += records


class FirstOfTies(random.Random):
    """Ties go to the first candidate, so a test decides which replica a tied pick takes."""

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        return 0


@dataclass
class PD:
    client: httpx.AsyncClient
    gateway: Gateway
    urls: dict[str, str]
    sink: Sink = field(default_factory=Sink)

    async def stats(self, replica: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.urls[replica]) as sim:
            body: dict[str, Any] = (await sim.get("/sim/stats")).json()
            return body

    async def scraped(self, *replicas: str) -> None:
        """Wait for a fresh scrape of each replica, so that no pick sees one scraped and one not."""
        async with asyncio.timeout(5):
            while not all(self.gateway.routing.board.engine(r) for r in replicas):
                await asyncio.sleep(0.01)

    async def chat(self, content: str, **extra: Any) -> httpx.Response:
        body = {"model": "m", "messages": messages(content), "max_tokens": 5, **extra}
        return await self.client.post("/v1/chat/completions", json=body)


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def prompt_tokens(question: str) -> int:
    return count_chat_tokens([SYSTEM, question])


async def _sim(stack: contextlib.AsyncExitStack, name: str, role: str) -> Endpoint:
    events, replay = (f"tcp://127.0.0.1:{port}" for port in free_ports(2))  # two at once: never equal
    config = SimConfig(
        model="m",
        time_scale=50,
        kv_events_endpoint=events,
        kv_events_replay_endpoint=replay,
        kv_transfer=PRODUCER if role == "prefill" else CONSUMER,
    )
    app = create_sim_app(config)
    await stack.enter_async_context(app.router.lifespan_context(app))
    url = await stack.enter_async_context(serve(app))
    return Endpoint(name, "d", "m", url, role=role, kv_events=events, kv_events_replay=replay)


async def _failing(stack: contextlib.AsyncExitStack, name: str, role: str) -> Endpoint:
    async def answer_500(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom"}}, status=500)

    async def idle_metrics(_request: web.Request) -> web.Response:  # looks as idle as a fresh sim
        return web.Response(text='vllm:kv_cache_usage_perc{model_name="m"} 0.0\n')

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer_500)
    app.router.add_get("/metrics", idle_metrics)
    url = await stack.enter_async_context(serve_aiohttp(app))
    return Endpoint(name, "d", "m", url, role=role)


@contextlib.asynccontextmanager
async def pd_gateway(
    *replicas: tuple[str, str, str], policy: object = "precise-prefix", scrape_interval_s: float = 0.1
) -> AsyncIterator[PD]:
    """`(name, role, kind)` per replica, kind `sim`, `dead` (nobody listens) or `500` (answers 500)."""
    async with contextlib.AsyncExitStack() as stack:
        endpoints = []
        for name, role, kind in replicas:
            if kind == "sim":
                endpoints.append(await _sim(stack, name, role))
            elif kind == "500":
                endpoints.append(await _failing(stack, name, role))
            else:
                endpoints.append(Endpoint(name, "d", "m", f"http://127.0.0.1:{free_port()}", role=role))
        registry = EndpointRegistry()
        await registry.publish("d", endpoints, model="m", policy=PolicySpec.model_validate(policy))
        sink = Sink()
        meter = UsageMeter(sink, flush_interval_s=0.01)
        gateway = Gateway(registry, guards=Guards(meter=meter), scrape_interval_s=scrape_interval_s)
        gateway.routing.rng = FirstOfTies()
        await gateway.start()
        stack.push_async_callback(gateway.close)
        url = await stack.enter_async_context(serve(GatewayApp(gateway)))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        yield PD(client, gateway, {e.replica: e.url for e in endpoints}, sink)


async def test_a_request_is_prefilled_on_one_replica_and_decoded_on_another() -> None:
    async with pd_gateway(("p0", "prefill", "sim"), ("d0", "decode", "sim")) as pd:
        # A client's own kv_transfer_params never reach a replica.
        bogus = {
            "do_remote_prefill": True,
            "remote_engine_id": "x",
            "remote_block_ids": [0],
            "remote_host": "evil",
        }
        response = await pd.chat("What is KV?", kv_transfer_params=bogus)
        assert response.status_code == 200, response.text
        assert response.headers["x-computenet-replica"] == "d0"
        assert response.headers["x-computenet-prefill-replica"] == "p0"
        prompt = prompt_tokens("What is KV?")
        assert response.json()["usage"]["prompt_tokens"] == prompt
        assert response.json()["usage"]["completion_tokens"] == 5
        prefilled, decoded = await pd.stats("p0"), await pd.stats("d0")
        assert prefilled["prompt_tokens_by_source"]["local_compute"] == prompt
        assert decoded["prompt_tokens_by_source"] == {
            "local_compute": 1,
            "local_cache_hit": 0,
            "external_kv_transfer": prompt - 1,
        }
        assert decoded["kv_transfer"]["transfers"] == 1
    [record] = pd.sink.records  # metered once, from the decode's answer
    assert (record.endpoint, record.prompt_tokens, record.completion_tokens) == ("d0", prompt, 5)


async def test_a_streamed_request_relays_the_decode_stream() -> None:
    async with pd_gateway(("p0", "prefill", "sim"), ("d0", "decode", "sim")) as pd:
        response = await pd.chat("Stream it", max_tokens=4, stream=True)
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        pieces = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
        assert len([p for p in pieces if p]) == 4
        assert events[-1]["usage"]["prompt_tokens"] == prompt_tokens("Stream it")
        assert response.text.endswith("data: [DONE]\n\n")
        assert (await pd.stats("d0"))["kv_transfer"]["transfers"] == 1
    [record] = pd.sink.records
    assert record.completion_tokens == 4


async def test_prefix_hits_steer_the_prefill() -> None:
    """Two prefill replicas publishing KV events: a conversation's next turn is prefilled where its
    prompt's blocks are (ties would go to p0, so p1 is chosen only for its cache)."""
    async with pd_gateway(("p0", "prefill", "sim"), ("p1", "prefill", "sim"), ("d0", "decode", "sim")) as pd:
        for topic, holder in (("alpha", "p1"), ("beta", "p0"), ("gamma", "p1")):
            first_turn = f"{topic} " * 40
            async with httpx.AsyncClient(base_url=pd.urls[holder]) as sim:  # an earlier turn, served there
                body = {"model": "m", "messages": messages(first_turn), "max_tokens": 1}
                assert (await sim.post("/v1/chat/completions", json=body)).status_code == 200
            blocks = engine_block_hashes(RoutingRequest("m", content=messages(first_turn)), "sim").hashes  # type: ignore[union-attr]
            assert blocks
            async with asyncio.timeout(5):  # the prefill's KV events reach the gateway's index
                while pd.gateway.kv_index.match(blocks).get(holder, 0) < len(blocks):
                    await asyncio.sleep(0.02)
            follow_up = await pd.chat(first_turn + " and then?")
            assert follow_up.headers["x-computenet-prefill-replica"] == holder
            assert follow_up.headers["x-computenet-replica"] == "d0"


async def test_a_failed_prefill_is_retried_on_another_prefill_replica() -> None:
    async with pd_gateway(("p0", "prefill", "dead"), ("p1", "prefill", "sim"), ("d0", "decode", "sim")) as pd:
        response = await pd.chat("retry me")
        assert response.status_code == 200
        assert response.headers["x-computenet-prefill-replica"] == "p1"
        assert (await pd.stats("d0"))["kv_transfer"]["transfers"] == 1


async def test_with_no_working_prefill_replica_the_decode_replica_prefills_itself() -> None:
    async with pd_gateway(("p0", "prefill", "dead"), ("p1", "prefill", "500"), ("d0", "decode", "sim")) as pd:
        response = await pd.chat("fall back")
        assert response.status_code == 200
        assert "x-computenet-prefill-replica" not in response.headers
        decoded = await pd.stats("d0")
        assert decoded["kv_transfer"]["transfers"] == 0
        assert decoded["prompt_tokens_by_source"]["local_compute"] == prompt_tokens("fall back")


async def test_a_failed_decode_is_retried_with_the_same_prefilled_kv() -> None:
    async with pd_gateway(("p0", "prefill", "sim"), ("d0", "decode", "500"), ("d1", "decode", "sim")) as pd:
        await pd.scraped("d0", "d1")  # equal figures: the tie goes to d0, which fails
        response = await pd.chat("decode elsewhere")
        assert response.status_code == 200
        assert response.headers["x-computenet-replica"] == "d1"
        assert (await pd.stats("p0"))["prompt_tokens_by_source"]["local_compute"] == prompt_tokens(
            "decode elsewhere"
        )  # one prefill, though two decode replicas were tried
        assert (await pd.stats("d1"))["kv_transfer"]["transfers"] == 1
        errors = pd.gateway.metrics.registry.get_sample_value(
            "computenet_gateway_upstream_attempts_total", {"backend": "deployment/d", "outcome": "error"}
        )
        assert errors == 1


async def test_the_decode_goes_where_the_kv_cache_has_room() -> None:
    replicas = (("p0", "prefill", "sim"), ("d0", "decode", "sim"), ("d1", "decode", "sim"))
    async with pd_gateway(*replicas, scrape_interval_s=3600) as pd:  # the figures below stay put
        await pd.scraped("d0", "d1")  # the one scrape at start is in: nothing overwrites what follows
        pd.gateway.routing.board.record_scrape("d0", EngineLoad(kv_cache_usage=0.9))
        pd.gateway.routing.board.record_scrape("d1", EngineLoad(kv_cache_usage=0.1))
        for question in ("where is room?", "and now?"):
            assert (await pd.chat(question)).headers["x-computenet-replica"] == "d1"


async def test_with_no_decode_replica_ready_a_prefill_replica_serves_the_request_whole() -> None:
    async with pd_gateway(("p0", "prefill", "sim")) as pd:
        response = await pd.chat("anyone?")
        assert response.status_code == 200
        assert response.headers["x-computenet-replica"] == "p0"
        assert "x-computenet-prefill-replica" not in response.headers


async def test_a_deployment_with_its_own_router_is_sent_to_the_router() -> None:
    """The router pairs prefill and decode itself (vLLM's disagg proxy, llm-d's sidecar)."""
    replicas = (("router-0", "router", "sim"), ("p0", "prefill", "sim"), ("d0", "decode", "sim"))
    async with pd_gateway(*replicas) as pd:
        response = await pd.chat("to the router")
        assert response.headers["x-computenet-replica"] == "router-0"
        assert "x-computenet-prefill-replica" not in response.headers
        assert (await pd.stats("d0"))["kv_transfer"]["transfers"] == 0
