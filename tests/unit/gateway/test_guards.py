"""Keys, rate limits, budgets and the priority queue, end to end through one gateway in
front of a `sim` replica (or an upstream that answers when the test says so)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from computenet.api import ApiKey, Endpoint, KeyLimits, Route, Tenant, hash_key, load_text, mint_key
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.gateway import Gateway, GatewayApp
from computenet.gateway.admission import Gates
from computenet.gateway.auth import KeyBook
from computenet.gateway.guards import Guards
from computenet.gateway.limits import MemoryBudgetLedger, MemoryRateLimiter

from ..servers import serve, serve_aiohttp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def key(tenant: str = "acme", **kw: object) -> tuple[str, ApiKey]:
    key_id, text = mint_key()
    return text, ApiKey(key_id=key_id, tenant=tenant, secret_sha256=hash_key(text), **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def stack(
    keys: list[ApiKey], manifest: str = "", *, upstream: str | None = None, gates: Gates | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    resources = load_text(manifest) if manifest else []
    guards = Guards(limiter=MemoryRateLimiter(), ledger=MemoryBudgetLedger(), gates=gates)
    guards.configure_tenants([r for r in resources if isinstance(r, Tenant)])
    gw = Gateway(keys=KeyBook(keys), guards=guards, max_in_flight_per_endpoint=1 if gates else None)
    async with contextlib.AsyncExitStack() as es:
        url = upstream or await es.enter_async_context(
            serve(create_sim_app(SimConfig(model="m", time_scale=50)))
        )
        await gw.registry.publish("m", [Endpoint("m-0", "m", "m", url)], model="m", policy="round_robin")
        gw.configure([r for r in resources if isinstance(r, Route)], [])
        await gw.start()
        try:
            gurl = await es.enter_async_context(serve(GatewayApp(gw)))
            client = await es.enter_async_context(httpx.AsyncClient(base_url=gurl, timeout=20))
            yield client, gw
        finally:
            await gw.close()


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


async def test_keys_are_checked_and_scoped_to_models() -> None:
    good, good_key = key(models=("m",))
    other, other_key = key(models=("other",))
    old, old_key = key(expires_at=time.time() - 1)
    async with stack([good_key, other_key, old_key]) as (client, _):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 401
        wrong = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(good[:-2] + "xx"))
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(good))).status_code == 200
        denied = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(other))
        assert denied.status_code == 403 and "may not call `m`" in denied.json()["error"]["message"]
        expired = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(old))
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key"


async def test_without_any_key_auth_is_off() -> None:
    async with stack([]) as (client, gw):
        assert not gw.keys.enabled
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


TENANT_5_RPM = """
apiVersion: computenet.io/v1
kind: Tenant
metadata: {name: acme}
spec: {limits: {requestsPerMinute: 5}}
"""


async def test_request_limit_answers_429_with_retry_after_and_openai_headers() -> None:
    text, k = key()
    async with stack([k], TENANT_5_RPM) as (client, _):
        codes = []
        for _ in range(7):
            resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(text))
            codes.append(resp.status_code)
        assert codes == [200] * 5 + [429] * 2
        assert resp.json()["error"]["code"] == "rate_limit_exceeded"
        assert "tenant:acme" in resp.json()["error"]["message"]
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["x-ratelimit-limit-requests"] == "5"
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"


async def test_token_limit_charges_the_estimate_then_corrects_it_with_real_usage() -> None:
    text, k = key(limits=KeyLimits(tokens_per_minute=300))
    body = {**CHAT, "max_tokens": 200}  # charged at admission: 1 prompt token + 200
    async with held_upstream() as (url, release, _), stack([k], upstream=url) as (client, _):
        release.set()  # answers at once, with usage of 1 + 1 tokens
        first = await client.post("/v1/chat/completions", json=body, headers=bearer(text))
        second = await client.post("/v1/chat/completions", json=body, headers=bearer(text))
        third = await client.post(
            "/v1/chat/completions", json={**body, "max_tokens": 298}, headers=bearer(text)
        )
    # Without the correction the second estimate (201) would not fit beside the first (201).
    assert [first.status_code, second.status_code] == [200, 200]
    assert first.headers["x-ratelimit-remaining-tokens"] == "99"
    assert third.status_code == 429  # 2 + 2 used, 299 more does not fit in 300


async def test_a_request_bigger_than_the_token_limit_runs_once_then_the_debt_refuses_the_next() -> None:
    text, k = key(limits=KeyLimits(tokens_per_minute=100))
    body = {**CHAT, "max_tokens": 150}
    async with stack([k]) as (client, _):
        first = await client.post("/v1/chat/completions", json=body, headers=bearer(text))
        second = await client.post("/v1/chat/completions", json=body, headers=bearer(text))
    assert first.status_code == 200  # a full bucket lets one oversized request through, into debt
    assert second.status_code == 429 and "tokens" in second.json()["error"]["message"]
    assert second.headers["x-ratelimit-limit-tokens"] == "100"


BUDGET_ROUTE = """
apiVersion: computenet.io/v1
kind: Route
metadata: {name: m}
spec:
  targets: [{deployment: m, price: {input: 0, output: 1000}}]
---
apiVersion: computenet.io/v1
kind: Tenant
metadata: {name: acme}
spec: {budget: {limitUsd: 0.035, period: month}}
"""


async def test_concurrent_requests_cannot_overshoot_a_budget() -> None:
    text, k = key()
    # $1000 per 1M output tokens: each request reserves 10 tokens' worth ($0.01), so at
    # most three of ten concurrent requests may start under a $0.035 cap.
    async with stack([k], BUDGET_ROUTE) as (client, gw):
        replies = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10}, headers=bearer(text))
                for _ in range(10)
            )
        )
        ok = [r for r in replies if r.status_code == 200]
        refused = [r for r in replies if r.status_code == 429]
        assert len(ok) + len(refused) == 10 and 1 <= len(ok) <= 3
        assert refused[0].json()["error"]["code"] == "insufficient_quota"
        spent = sum(r.json()["usage"]["completion_tokens"] for r in ok) * 1000 / 1e6
        assert gw.guards.ledger is not None
        assert await gw.guards.ledger.spent("tenant:acme", "month") == pytest.approx(spent)
        assert spent <= 0.035


@contextlib.asynccontextmanager
async def held_upstream() -> AsyncIterator[tuple[str, asyncio.Event, list[str]]]:
    """Answers each request only when `release` is set; records the order it saw them in."""
    release, order = asyncio.Event(), []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        order.append(body["messages"][0]["content"])
        await release.wait()
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    try:
        async with serve_aiohttp(app) as url:
            yield url, release, order
    finally:
        release.set()


async def test_saturated_model_queues_by_priority_and_sheds_the_lowest() -> None:
    async with (
        held_upstream() as (url, release, order),
        stack([], upstream=url, gates=Gates(max_queue=2)) as (client, _),
    ):

        async def call(name: str, priority: str) -> int:
            body = {**CHAT, "messages": [{"role": "user", "content": name}]}
            resp = await client.post(
                "/v1/chat/completions", json=body, headers={"x-computenet-priority": priority}
            )
            return resp.status_code

        first = asyncio.create_task(call("first", "normal"))  # takes the only slot
        while not order:
            await asyncio.sleep(0.01)
        low = asyncio.create_task(call("low", "low"))
        await asyncio.sleep(0.05)
        mid = asyncio.create_task(call("mid", "0"))
        await asyncio.sleep(0.05)
        high = asyncio.create_task(call("high", "high"))  # queue full: sheds "low"
        assert await asyncio.wait_for(low, 5) == 429
        bad = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-computenet-priority": "urgent"}
        )
        assert bad.status_code == 400 and "x-computenet-priority" in bad.json()["error"]["message"]
        release.set()
        assert await asyncio.gather(first, mid, high) == [200, 200, 200]
    assert order == ["first", "high", "mid"]


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 503)])
async def test_an_unreachable_redis_fails_open_or_closed_as_configured(mode: str, status: int) -> None:
    from computenet.gateway.limits import RedisRateLimiter
    from computenet.pools.processes import free_port

    text, k = key(limits=KeyLimits(requests_per_minute=100))
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    guards = Guards(limiter=RedisRateLimiter(dead, failure_mode=mode))  # type: ignore[arg-type]
    gw = Gateway(keys=KeyBook([k]), guards=guards)
    async with serve(create_sim_app(SimConfig(model="m", time_scale=50))) as url:
        await gw.registry.publish("m", [Endpoint("m-0", "m", "m", url)], model="m", policy="round_robin")
        async with serve(GatewayApp(gw)) as gurl, httpx.AsyncClient(base_url=gurl) as client:
            resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(text))
        await gw.close()
    assert resp.status_code == status
    if status == 503:
        assert resp.json()["error"]["code"] == "limiter_unavailable" and resp.headers["retry-after"] == "1"
