"""What an operator sees of the gateway: Prometheus series, trace context sent upstream,
and one access-log line per request that never carries the prompt or a key."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from computenet.api import ApiKey, Endpoint, hash_key, mint_key
from computenet.gateway import Gateway, GatewayApp
from computenet.gateway.auth import KeyBook

from ..servers import serve, serve_aiohttp

SECRET_PROMPT = "my password is hunter2"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    headers: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        headers.append(dict(request.headers))
        body = await request.json()
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for _ in range(3):
                await resp.write(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
            usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
            await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
            return resp
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_aiohttp(app) as url:
        yield url, headers


async def test_metrics_traces_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    key_id, text = mint_key()
    book = KeyBook([ApiKey(key_id=key_id, tenant="acme", secret_sha256=hash_key(text))])
    body = {"model": "m", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
    auth = {"Authorization": f"Bearer {text}"}
    caplog.set_level(logging.INFO, logger="computenet.access")
    async with recording_upstream() as (url, seen):
        gw = Gateway(keys=book)
        await gw.registry.publish("d", [Endpoint("d-0", "d", "m", url)], model="m", policy="round_robin")
        async with serve(GatewayApp(gw)) as gurl, httpx.AsyncClient(base_url=gurl) as client:
            parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
            await client.post("/v1/chat/completions", json=body, headers={**auth, "traceparent": parent})
            await client.post("/v1/chat/completions", json={**body, "stream": True}, headers=auth)
            await client.post("/v1/chat/completions", json={**body, "model": "nope"}, headers=auth)
            metrics = (await client.get("/metrics")).text
        await gw.close()

    # The backend joined the client's trace, as a child of the gateway (a new span id) ...
    sent = seen[0]["traceparent"].split("-")
    assert sent[1] == TRACE_ID and sent[2] != "00f067aa0ba902b7"
    # ... and a request without one started a trace of its own.
    assert len(seen[1]["traceparent"].split("-")[1]) == 32
    # The client's key is ours: it never goes upstream.
    assert all(text not in json.dumps(h) for h in seen)

    labels = 'backend="deployment/d",model="m",tenant="acme"'
    assert (
        'computenet_gateway_requests_total{backend="deployment/d",code="200",model="m",tenant="acme"} 2.0'
        in metrics
    )
    assert f"computenet_gateway_request_duration_seconds_count{{{labels}}} 2.0" in metrics
    assert f"computenet_gateway_time_to_first_token_seconds_count{{{labels}}} 2.0" in metrics
    assert (
        'computenet_gateway_inter_token_latency_seconds_count{backend="deployment/d",model="m"} 1.0'
        in metrics
    )
    assert (
        'computenet_gateway_tokens_total{backend="deployment/d",kind="completion",model="m",tenant="acme"} 5.0'
        in metrics
    )
    assert 'computenet_gateway_errors_total{cause="model_not_found",model="nope"} 1.0' in metrics
    assert 'computenet_gateway_in_flight_requests{model="m"} 0.0' in metrics
    assert 'computenet_gateway_breaker_state{endpoint="d-0"} 0.0' in metrics

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "computenet.access"]
    assert [line["status"] for line in lines] == [200, 200, 404]
    assert lines[2]["cause"] == "model_not_found" and lines[2]["request_id"]
    assert lines[0]["key_id"] == key_id and lines[0]["tenant"] == "acme" and lines[1]["stream"] is True
    assert lines[1]["completion_tokens"] == 3
    logged = caplog.text
    assert SECRET_PROMPT not in logged and text not in logged
