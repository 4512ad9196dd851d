"""Streaming from the sim: OpenAI chunk shapes, include_usage, and disconnects aborting in the core."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import httpx
from sim_testkit import MODEL, chat_body, scrape, sse_payloads, wait_for
from starlette.applications import Starlette

from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app
from computenet.engines.sim.tokens import count_tokens


async def test_chat_stream_chunk_shapes(sim: httpx.AsyncClient) -> None:
    response = await sim.post("/v1/chat/completions", json=chat_body(max_tokens=4, stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = sse_payloads(response.text)
    assert done == "[DONE]"
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all("usage" not in chunk for chunk in chunks)
    first, *pieces, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(pieces) == 4
    assert all(piece["choices"][0]["finish_reason"] is None for piece in pieces)
    text = "".join(piece["choices"][0]["delta"]["content"] for piece in pieces)
    assert count_tokens(text) == 4
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


async def test_streamed_text_equals_non_streamed_text(sim: httpx.AsyncClient) -> None:
    whole = await sim.post("/v1/chat/completions", json=chat_body(max_tokens=6))
    streamed = await sim.post("/v1/chat/completions", json=chat_body(max_tokens=6, stream=True))
    deltas = [chunk["choices"][0]["delta"].get("content", "") for chunk in sse_payloads(streamed.text)[:-1]]
    assert "".join(deltas) == whole.json()["choices"][0]["message"]["content"]


async def test_stream_include_usage_adds_a_usage_chunk(sim: httpx.AsyncClient) -> None:
    body = chat_body(max_tokens=3, stream=True, stream_options={"include_usage": True})
    *chunks, done = sse_payloads((await sim.post("/v1/chat/completions", json=body)).text)
    assert done == "[DONE]"
    *content_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 3
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 3
    assert all(chunk["usage"] is None for chunk in content_chunks)
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_text_completion_stream(sim: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "Say hi", "max_tokens": 3, "stream": True}
    *chunks, done = sse_payloads((await sim.post("/v1/completions", json=body)).text)
    assert done == "[DONE]"
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    *pieces, last = chunks
    assert count_tokens("".join(chunk["choices"][0]["text"] for chunk in pieces)) == 3
    assert last["choices"][0]["text"] == ""
    assert last["choices"][0]["finish_reason"] == "length"


async def test_stream_errors_before_streaming_are_plain_json(sim: httpx.AsyncClient) -> None:
    response = await sim.post("/v1/chat/completions", json={**chat_body(stream=True), "model": "other"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


class _Client:
    """A raw ASGI client that can hang up whenever the test says so."""

    def __init__(self, app: Starlette, body: dict[str, Any]) -> None:
        self._app = app
        self._body = json.dumps(body).encode()
        self._sent_request = False
        self.hang_up = asyncio.Event()
        self.body_chunks: list[bytes] = []

    async def run(self) -> None:
        await self._app(self._scope(), self._receive, self._send)

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_request:
            self._sent_request = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.hang_up.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            self.body_chunks.append(message["body"])

    @staticmethod
    def _scope() -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("sim", 80),
        }


async def test_stream_disconnect_aborts_and_frees_kv_at_once() -> None:
    app = create_app(SimConfig(model=MODEL, max_num_seqs=1, time_scale=0.5))  # ~15 ms per token
    client = _Client(app, chat_body("word " * 500, max_tokens=1000, stream=True))  # 15 s if it ran to the end
    running = asyncio.create_task(client.run())
    engine = app.state.engine
    await _until(lambda: len(client.body_chunks) >= 2)
    assert engine.kv_cache_usage > 0
    client.hang_up.set()
    await asyncio.wait_for(running, timeout=2)
    assert (engine.running, engine.waiting, engine.kv_cache_usage) == (0, 0, 0.0)
    assert not engine.core.has_work
    async with _http(app) as http:
        metrics = await scrape(http)
    assert metrics["vllm:generation_tokens_total"] < 100
    assert metrics.get("vllm:request_success_total", 0) == 0


async def test_disconnect_while_waiting_leaves_the_queue() -> None:
    app = create_app(SimConfig(model=MODEL, max_num_seqs=1, time_scale=1))
    async with _http(app) as sim:
        await _hang_up_while_queued(app, sim)


async def _hang_up_while_queued(app: Starlette, sim: httpx.AsyncClient) -> None:
    holder = asyncio.create_task(sim.post("/v1/chat/completions", json=chat_body(max_tokens=100)))  # ~0.7 s
    await wait_for(lambda: _gauge(sim, "vllm:num_requests_running", 1))
    queued = _Client(app, chat_body(max_tokens=5))  # non-streaming this time
    queued_task = asyncio.create_task(queued.run())
    await wait_for(lambda: _gauge(sim, "vllm:num_requests_waiting", 1))
    queued.hang_up.set()
    await asyncio.wait_for(queued_task, timeout=2)
    assert queued.body_chunks == []
    assert app.state.engine.waiting == 0
    assert (await holder).status_code == 200
    assert (await scrape(sim))["vllm:request_success_total"] == 1


async def _gauge(client: httpx.AsyncClient, name: str, value: float) -> bool:
    return (await scrape(client))[name] == value


async def _until(condition: Any) -> None:
    async def check() -> bool:
        return bool(condition())

    await wait_for(check)


def _http(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
