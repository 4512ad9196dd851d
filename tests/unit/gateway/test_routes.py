"""Routes over deployments and providers: weights, fallbacks, breakers, usage.

The "provider" here is a small aiohttp server on 127.0.0.1 that checks the bearer key
the way a hosted OpenAI-compatible API does; deployments are `sim` replicas or aiohttp
servers that fail on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from computenet.api import Endpoint, Provider, Route, load_text
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.gateway import ConfigError, Gateway, GatewayApp
from computenet.gateway.resilience import BreakerState

from ..servers import serve, serve_aiohttp

PROVIDER_KEY = "sk-test-provider-secret"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


@contextlib.asynccontextmanager
async def provider(*, usage: bool = True) -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """A hosted-API stand-in: checks the key, records what it was sent, answers in OpenAI's shape."""
    seen: list[dict[str, object]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {PROVIDER_KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        seen.append(body)
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for token in ("a", "b", "c"):
                chunk = {"choices": [{"index": 0, "delta": {"content": token}}], "model": body["model"]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if usage and body.get("stream_options", {}).get("include_usage"):
                tail = {
                    "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                }
                await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp
        answer: dict[str, object] = {
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the provider"}}],
        }
        if usage:
            answer["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_aiohttp(app, cancel_on_disconnect=True) as url:
        yield f"{url}/v1", seen


@contextlib.asynccontextmanager
async def dying_replica() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """Answers like a replica until `dead` is set, then hangs up on every request."""
    dead = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        if dead.is_set():
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        body = await request.json()
        return web.json_response(
            {
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the replica"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_aiohttp(app) as url:
        yield url, dead


def manifest(provider_url: str, route: str) -> tuple[list[Route], list[Provider]]:
    text = f"""
apiVersion: computenet.io/v1
kind: Provider
metadata: {{name: hosted}}
spec:
  baseUrl: {provider_url}
  apiKey: {{fromEnv: TEST_PROVIDER_KEY}}
  models:
    - name: gpt-test
      price: {{input: 1.0, output: 2.0}}
---
{route}
"""
    resources = load_text(text)
    return (
        [r for r in resources if isinstance(r, Route)],
        [r for r in resources if isinstance(r, Provider)],
    )


@contextlib.asynccontextmanager
async def gateway(
    routes: list[Route], providers: list[Provider], replicas: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    gw = Gateway()
    for name, url in replicas.items():
        endpoint = Endpoint(replica=f"{name}-0", deployment=name, model=name, url=url)
        await gw.registry.publish(name, [endpoint], model=name, policy="round_robin")
    gw.configure(routes, providers)
    await gw.start()
    try:
        async with serve(GatewayApp(gw)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client, gw
    finally:
        await gw.close()


FALLBACK_ROUTE = """
apiVersion: computenet.io/v1
kind: Route
metadata: {name: chat}
spec:
  targets: [{deployment: llama}]
  fallbacks: [{provider: hosted, model: gpt-test}]
"""


async def test_a_dying_deployment_falls_back_to_the_provider_with_no_failed_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    async with provider() as (purl, seen), dying_replica() as (rurl, dead):
        routes, providers = manifest(purl, FALLBACK_ROUTE)
        async with gateway(routes, providers, {"llama": rurl}) as (client, gw):

            async def one() -> tuple[int, str]:
                resp = await client.post("/v1/chat/completions", json=CHAT)
                return resp.status_code, resp.headers.get("x-computenet-replica", "")

            before = await asyncio.gather(*(one() for _ in range(10)))
            dead.set()
            after = await asyncio.gather(*(one() for _ in range(30)))
            assert {s for s, _ in before + after} == {200}
            assert {r for _, r in before} == {"llama-0"}
            assert {r for _, r in after} == {"hosted:gpt-test"}
            # The provider got its own model name and the key from the environment.
            assert {body["model"] for body in seen} == {"gpt-test"}
            # Enough consecutive failures opened the replica's breaker: later requests skip it.
            assert gw.breakers.get("llama-0").state is BreakerState.OPEN


async def test_fallback_also_covers_a_deployment_with_no_ready_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    async with provider() as (purl, _seen):
        routes, providers = manifest(purl, FALLBACK_ROUTE)
        async with gateway(routes, providers, {}) as (client, _):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200
            assert resp.json()["choices"][0]["message"]["content"] == "from the provider"


async def test_weights_share_traffic_between_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    route = """
apiVersion: computenet.io/v1
kind: Route
metadata: {name: chat}
spec:
  targets: [{deployment: llama, weight: 3}, {provider: hosted, model: gpt-test, weight: 1}]
"""
    async with provider() as (purl, _seen), dying_replica() as (rurl, _dead):
        routes, providers = manifest(purl, route)
        async with gateway(routes, providers, {"llama": rurl}) as (client, _):
            served = Counter()
            for _ in range(200):
                resp = await client.post("/v1/chat/completions", json=CHAT)
                served[resp.headers["x-computenet-replica"]] += 1
    assert 120 <= served["llama-0"] <= 180  # 150 expected; wide enough never to flake
    assert served["llama-0"] + served["hosted:gpt-test"] == 200


@pytest.mark.parametrize("backend_usage", [True, False])
async def test_streams_always_end_with_usage(monkeypatch: pytest.MonkeyPatch, backend_usage: bool) -> None:
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    route = """
apiVersion: computenet.io/v1
kind: Route
metadata: {name: chat}
spec: {targets: [{provider: hosted, model: gpt-test}]}
"""
    async with provider(usage=backend_usage) as (purl, seen):
        routes, providers = manifest(purl, route)
        async with gateway(routes, providers, {}) as (client, _):
            resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "user": "x"})
            events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
            plain = await client.post("/v1/chat/completions", json=CHAT)
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] == (5 if backend_usage else 2)  # estimated: 11 characters / 4 per token
    # The gateway asked for the usage chunk, and passed the unknown field through untouched.
    assert seen[0]["stream_options"] == {"include_usage": True} and seen[0]["user"] == "x"
    plain_usage = plain.json()["usage"]
    assert plain_usage["total_tokens"] == plain_usage["prompt_tokens"] + plain_usage["completion_tokens"]
    assert plain_usage["completion_tokens"] == (3 if backend_usage else 4)  # "from the provider": 18 / 4


def test_a_missing_provider_key_or_target_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEST_PROVIDER_KEY", raising=False)
    routes, providers = manifest("http://127.0.0.1:9/v1", FALLBACK_ROUTE)
    with pytest.raises(ConfigError, match="environment variable TEST_PROVIDER_KEY is not set"):
        Gateway().configure(routes, providers)
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    bad_model = FALLBACK_ROUTE.replace("gpt-test", "gpt-nope")
    routes, providers = manifest("http://127.0.0.1:9/v1", bad_model)
    with pytest.raises(
        ConfigError, match=r"spec.fallbacks\[0\].model: Provider 'hosted' lists no model 'gpt-nope'"
    ):
        Gateway().configure(routes, providers)


def test_the_provider_key_never_shows_in_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    routes, providers = manifest("http://127.0.0.1:9/v1", FALLBACK_ROUTE)
    gw = Gateway()
    gw.configure(routes, providers)
    plan = gw.table.lookup("chat")
    assert plan is not None
    assert PROVIDER_KEY not in repr(plan)


async def test_a_body_over_the_limit_is_refused_with_413() -> None:
    async with serve(create_sim_app(SimConfig(model="m", time_scale=20))) as url:
        gw = Gateway(max_body_bytes=1000)
        await gw.registry.publish("m", [Endpoint("m-0", "m", "m", url)], model="m", policy="round_robin")
        async with serve(GatewayApp(gw)) as gurl, httpx.AsyncClient(base_url=gurl) as client:
            big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
            resp = await client.post("/v1/chat/completions", json=big)
            ok = await client.post(
                "/v1/chat/completions", json={**big, "messages": [{"role": "user", "content": "hi"}]}
            )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"
    assert ok.status_code == 200


async def test_a_route_rewrites_its_public_name_to_the_deployments_model() -> None:
    route = """
apiVersion: computenet.io/v1
kind: Route
metadata: {name: chat}
spec: {targets: [{deployment: llama}]}
"""
    async with serve(create_sim_app(SimConfig(model="llama", time_scale=50))) as url:
        routes, _ = manifest("http://127.0.0.1:9/v1", route)
        async with gateway(routes, [], {"llama": url}) as (client, _gw):
            via_route = await client.post("/v1/chat/completions", json=CHAT)
            direct = await client.post("/v1/chat/completions", json={**CHAT, "model": "llama"})
    assert via_route.status_code == 200 and direct.status_code == 200
    assert via_route.json()["model"] == "llama"


async def test_the_routes_deadline_answers_504_and_frees_the_replica() -> None:
    route = """
apiVersion: computenet.io/v1
kind: Route
metadata: {name: chat}
spec: {targets: [{deployment: slow}], timeoutSeconds: 0.3}
"""
    stalled = asyncio.Event()

    async def chat(request: web.Request) -> web.Response:
        stalled.set()
        await asyncio.sleep(30)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_aiohttp(app, cancel_on_disconnect=True) as url:
        routes, _ = manifest("http://127.0.0.1:9/v1", route)
        async with gateway(routes, [], {"slow": url}) as (client, gw):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert gw.routing.board.outstanding("slow-0") == 0
    assert stalled.is_set()
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "deadline_exceeded"


def test_a_provider_url_without_a_host_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    routes, providers = manifest("https:///v1", FALLBACK_ROUTE)
    with pytest.raises(
        ConfigError, match=r"Provider 'hosted' spec.baseUrl: 'https:///v1' is not an http\(s\) URL"
    ):
        Gateway().configure(routes, providers)


@pytest.mark.parametrize(
    "answer",
    [
        b'{"choices": 3}',
        b'{"choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": null}}',
        b"[1, 2]",
        b"not json",
    ],
)
def test_odd_backend_answers_get_a_usage_estimate_not_an_error(answer: bytes) -> None:
    from computenet.gateway.openai import complete_json

    _, usage = complete_json(answer, prompt_estimate=7)
    assert usage.prompt_tokens in (0, 7) and usage.completion_tokens == 0


def test_streams_ask_the_backend_for_usage_even_with_other_stream_options() -> None:
    import orjson

    from computenet.gateway.openai import parse_request

    body = b'{"model": "m", "messages": [], "stream": true, "stream_options": {"x": 1}, "seed": 3}'
    sent = orjson.loads(parse_request("/v1/chat/completions", body).body)
    assert sent["stream_options"] == {"x": 1, "include_usage": True} and sent["seed"] == 3


def test_reapplying_an_unchanged_route_keeps_its_plan_and_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store change re-applies every Route; an unchanged one must keep its pipeline's state."""
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    routes, providers = manifest("http://127.0.0.1:9/v1", FALLBACK_ROUTE)
    gw = Gateway()
    gw.configure(routes, providers)
    before = gw.table.lookup("chat")
    gw.configure(routes, providers)
    assert gw.table.lookup("chat") is before
    moved, _ = manifest("http://127.0.0.1:10/v1", FALLBACK_ROUTE)  # same route, another provider URL
    gw.configure(moved, manifest("http://127.0.0.1:10/v1", FALLBACK_ROUTE)[1])
    after = gw.table.lookup("chat")
    assert after is not None and after is not before
