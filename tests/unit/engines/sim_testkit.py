"""Helpers for the sim tests: config defaults and readers for metrics and event streams.

Kept out of conftest.py so test modules import them by a name no other test directory uses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from computenet.engines.metrics import sample_sums

MODEL = "sim-test"
FAST_TIME_SCALE = 100.0  # simulated steps run this much faster than real time: shapes, not timing

SimClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return sample_sums(response.text)


def sse_payloads(text: str) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded except the final `[DONE]`."""
    payloads: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll `predicate` until true; fail the test if it never is."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def in_process(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


def chat_body(content: str = "Hello there, sim!", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
