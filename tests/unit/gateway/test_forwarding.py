"""The gateway in front of real HTTP upstreams on loopback: the `sim` engine for healthy
replicas, and tiny aiohttp servers for the failure modes a replica can show."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from computenet.api import Endpoint, PolicySpec
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.gateway import EndpointRegistry, Gateway, GatewayApp
from computenet.gateway.registry import Upstream
from computenet.gateway.routing.pipeline import RoutingRequest, RoutingState
from computenet.gateway.routing.presets import build_pipeline
from computenet.gateway.upstream import Origin
from computenet.pools.processes import free_port

from ..servers import serve, serve_aiohttp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    # Like vLLM's server, stop the handler as soon as the client (here: the gateway) goes away.
    async with serve_aiohttp(app, cancel_on_disconnect=True) as url:
        yield url


@contextlib.asynccontextmanager
async def gateway_with(
    *urls: str, policy: object = "round-robin"
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    registry = EndpointRegistry()
    endpoints = [Endpoint(replica=f"r{i}", deployment="d", model="m", url=u) for i, u in enumerate(urls)]
    await registry.publish("d", endpoints, model="m", policy=PolicySpec.model_validate(policy))
    gateway = Gateway(registry)
    await gateway.start()
    try:
        async with (
            serve(GatewayApp(gateway)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield client, gateway
    finally:
        await gateway.close()


@contextlib.asynccontextmanager
async def sim() -> AsyncIterator[str]:
    async with serve(create_sim_app(SimConfig(model="m", time_scale=20))) as url:
        yield url


async def _status_500(_request: web.Request) -> web.Response:
    return web.json_response({"error": "boom"}, status=500)


async def _status_400(_request: web.Request) -> web.Response:
    return web.json_response(
        {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}, status=400
    )


async def _hang_up(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()  # the replica dies mid-request, before answering
    return web.Response()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nobody listens there


def _attempts(gateway: Gateway, outcome: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "computenet_gateway_upstream_attempts_total", {"backend": "deployment/d", "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.parametrize("failure", ["refused", "500", "hang-up"])
async def test_failed_replicas_are_retried_on_another_and_every_request_succeeds(failure: str) -> None:
    handlers = {"500": _status_500, "hang-up": _hang_up}
    async with contextlib.AsyncExitStack() as stack:
        bad = (
            _dead_url()
            if failure == "refused"
            else await stack.enter_async_context(upstream(handlers[failure]))
        )
        good = await stack.enter_async_context(sim())
        client, gateway = await stack.enter_async_context(gateway_with(bad, good))
        for _ in range(6):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200
            assert resp.headers["x-computenet-replica"] == "r1"
        assert _attempts(gateway, "error") >= 3  # round robin sent half of the first tries to the bad one


async def test_client_errors_from_a_replica_are_passed_through_not_retried() -> None:
    async with upstream(_status_400) as bad, sim() as good, gateway_with(bad, good) as (client, gateway):
        codes = {(await client.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(4)}
        assert codes == {200, 400}
        assert _attempts(gateway, "error") == 0


async def test_when_every_replica_fails_the_client_gets_502_naming_them() -> None:
    async with upstream(_status_500) as a, gateway_with(a, _dead_url()) as (client, _):
        resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502
    message = resp.json()["error"]["message"]
    assert "r0: answered HTTP 500" in message and "r1: connect to 127.0.0.1" in message


async def test_request_errors_are_openai_shaped() -> None:
    async with sim() as good, gateway_with(good) as (client, gateway):
        await gateway.registry.publish("empty", [], model="cold", policy="round_robin")
        unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        cold = await client.post("/v1/chat/completions", json={**CHAT, "model": "cold"})
        assert cold.status_code == 503 and cold.headers["retry-after"] == "1"
        broken = await client.post("/v1/chat/completions", content=b"{not json")
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
        no_model = await client.post("/v1/completions", json={"prompt": "x"})
        assert no_model.status_code == 400 and "`model` is required" in no_model.json()["error"]["message"]
        assert no_model.json()["error"]["param"] == "model"
        bad_tokens = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": "many"})
        assert bad_tokens.status_code == 400 and bad_tokens.json()["error"]["param"] == "max_tokens"
        wrong_method = await client.get("/v1/chat/completions")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        models = (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["cold", "m"]


async def test_streams_are_relayed_as_they_are_produced() -> None:
    release = asyncio.Event()

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"first": true}\n\n')
        await release.wait()
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async with (
        upstream(slow_stream) as url,
        gateway_with(url) as (client, _),
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp,
    ):
        chunks = resp.aiter_bytes()
        first = await asyncio.wait_for(anext(chunks), 5)  # arrives while upstream still holds the rest
        assert b"first" in first
        release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_a_client_that_leaves_mid_stream_cancels_the_upstream_request() -> None:
    upstream_cancelled = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(b'data: {"tok": 1}\n\n')
            await asyncio.sleep(60)  # a long gap, as while a replica waits for its next token
        except (asyncio.CancelledError, ConnectionResetError):
            upstream_cancelled.set()
            raise

    async with upstream(slow) as url, gateway_with(url) as (client, gateway):
        async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            await anext(resp.aiter_bytes())
        await asyncio.wait_for(upstream_cancelled.wait(), 5)
        await asyncio.sleep(0.05)
        assert gateway.routing.board.outstanding("r0") == 0
        errors = gateway.metrics.registry.get_sample_value(
            "computenet_gateway_errors_total", {"model": "m", "cause": "client_gone"}
        )
        assert errors == 1


def _eps(n: int) -> list[Upstream]:
    return [
        Upstream(f"r{i}", Origin.parse("http://127.0.0.1:9"), "deployment/d", f"r{i}", "") for i in range(n)
    ]


def _pick(policy: str, state: RoutingState, eps: list[Upstream]) -> str:
    pipeline = build_pipeline(policy)
    request = RoutingRequest(
        model="m",
    )
    chosen = pipeline.pick(request, eps, state)
    assert chosen is not None
    pipeline.routed(request, chosen, state)
    return chosen.replica


def test_round_robin_takes_turns() -> None:
    pipeline, state, eps = build_pipeline("round-robin"), RoutingState(), _eps(3)
    picks = []
    for _ in range(6):
        request = RoutingRequest(
            model="m",
        )
        chosen = pipeline.pick(request, eps, state)
        assert chosen is not None
        pipeline.routed(request, chosen, state)
        picks.append(chosen.replica)
    assert picks == ["r0", "r1", "r2", "r0", "r1", "r2"]


def test_least_request_prefers_the_idle_replica_and_shares_ties() -> None:
    state, eps = RoutingState(), _eps(3)
    state.board.acquire("r0")
    state.board.acquire("r1")
    assert _pick("least-request", state, eps) == "r2"
    state.board.acquire("r2")
    assert {_pick("least-request", state, eps) for _ in range(30)} == {"r0", "r1", "r2"}
    state.board.release("r1")
    assert _pick("least_outstanding", state, eps) == "r1"  # the old name still works


async def test_embeddings_pass_through_with_unknown_fields_untouched() -> None:
    seen: list[dict[str, object]] = []

    async def embed(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(
            {
                "object": "list",
                "data": [{"embedding": [0.1, 0.2]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/embeddings", embed)
    async with serve_aiohttp(app) as url, gateway_with(url) as (client, _):
        body = {"model": "m", "input": "hello", "encoding_format": "float", "x-vendor": {"a": 1}}
        resp = await client.post("/v1/embeddings", json=body)
        missing = await client.post("/v1/embeddings", json={"model": "m"})
    assert resp.status_code == 200 and resp.json()["data"][0]["embedding"] == [0.1, 0.2]
    assert seen == [body]
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "input"
