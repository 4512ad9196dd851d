"""A prefill/decode deployment end to end in one process: store, reconciler, local pool with real `sim`
processes publishing KV events, and the gateway serving requests in two legs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from computenet.api import load_text
from computenet.gateway import EndpointRegistry, Gateway, GatewayApp
from computenet.gateway.registry import Published

from .servers import serve
from .test_reconciler import reconciling

MANIFEST = """
kind: Model
metadata: {name: llm}
spec: {source: sim://llm}
---
kind: Deployment
metadata: {name: pd}
spec:
  model: llm
  engine: sim
  engineArgs: {time_scale: 20}
  roles: [{name: prefill, replicas: 1}, {name: decode, replicas: 1}]
"""


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[EndpointRegistry]:
    async with reconciling(tmp_path, kv_events=True) as running:
        await running.store.apply_all(load_text(MANIFEST))
        yield running.registry


async def published(registry: EndpointRegistry) -> Published:
    async with asyncio.timeout(30):
        while True:
            found = registry.deployment("pd")
            if found is not None and len(found.prefill) == 1 and len(found.decode) == 1:
                return found
            await asyncio.sleep(0.05)


async def test_prefill_and_decode_replicas_are_published_with_their_roles_and_kv_events(
    registry: EndpointRegistry,
) -> None:
    pd = await published(registry)
    assert pd.disaggregated and pd.upstreams == ()
    [prefill], [decode] = pd.prefill, pd.decode
    assert (prefill.replica, prefill.role, decode.replica, decode.role) == (
        "pd-prefill-0",
        "prefill",
        "pd-decode-0",
        "decode",
    )
    for up in (prefill, decode):
        assert up.kv_events is not None and up.kv_events.startswith("tcp://127.0.0.1:")
        assert up.kv_events_replay is not None and up.kv_events_replay != up.kv_events
    gateway = Gateway(registry)
    await gateway.start()
    try:
        async with serve(GatewayApp(gateway)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = {"model": "llm", "messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 3}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.headers["x-computenet-prefill-replica"] == "pd-prefill-0"
            assert response.headers["x-computenet-replica"] == "pd-decode-0"
            decoded = await _stats(decode.origin.url)
            assert decoded["kv_transfer"]["transfers"] == 1
            assert decoded["prompt_tokens_by_source"]["local_compute"] == 1
        assert set(gateway.feeds.kv_events.tracked()) == {"pd-prefill-0", "pd-decode-0"}  # type: ignore[union-attr]
    finally:
        await gateway.close()


async def _stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as sim:
        body: dict[str, Any] = (await sim.get("/sim/stats")).json()
        return body
