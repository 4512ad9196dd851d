"""Real-time replay against a real sim server on loopback, and against servers that misbehave.

The sim's timing is being remodelled, so these tests assert behaviour (counts,
order, shapes, error messages), never absolute latencies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from computenet.engines.sim.config import SimConfig
from computenet.engines.sim.server import create_app
from computenet.pools.processes import free_port
from computenet.workloads import ReplayError, TraceRequest, discover_model, read_mooncake, replay, select

from ..servers import serve

MOONCAKE = Path(__file__).resolve().parents[3] / "data" / "traces" / "mooncake_conversation.jsonl"


def _requests(
    count: int, input_tokens: int = 30, output_tokens: int = 4, gap_s: float = 0.01
) -> list[TraceRequest]:
    return [TraceRequest(i * gap_s, input_tokens, output_tokens) for i in range(count)]


async def test_completions_against_the_sim() -> None:
    async with serve(create_app(SimConfig(model="m", max_model_len=4096))) as url:
        results = await replay(_requests(6), target=url)
    assert len(results) == 6
    for result in results:
        assert result.ok and result.error is None
        assert result.ttft_s is not None and result.e2e_s is not None and 0 < result.ttft_s <= result.e2e_s
        assert (result.output_tokens, result.prompt_tokens) == (4, 30)
        assert len(result.itl_s) == 3
    assert [r.sent_s for r in results] == sorted(r.sent_s for r in results)


async def test_chat_api_and_target_with_v1_suffix() -> None:
    async with serve(create_app(SimConfig(model="m", max_model_len=4096))) as url:
        results = await replay(_requests(3), target=url + "/v1/", model="m", api="chat")
    assert all(r.ok and r.output_tokens == 4 and r.prompt_tokens > 30 for r in results)


async def test_mooncake_slice_carries_its_lengths() -> None:
    rows = [
        replace(r, output_tokens=min(r.output_tokens, 3))
        for r in select(read_mooncake(MOONCAKE), limit=5, speedup=1e6)
    ]
    async with serve(create_app(SimConfig(model="m", max_model_len=131072))) as url:
        results = await replay(rows, target=url, model="m")
    assert [(r.ok, r.prompt_tokens, r.output_tokens) for r in results] == [
        (True, row.input_tokens, 3) for row in rows
    ]


async def test_http_errors_become_failed_results() -> None:
    async with serve(create_app(SimConfig(model="m", max_model_len=64))) as url:
        wrong_model = await replay(_requests(2), target=url, model="x")
        too_long = await replay(_requests(1, input_tokens=100), target=url, model="m")
    assert [(r.ok, r.error) for r in wrong_model] == [(False, "HTTP 404: The model `x` does not exist.")] * 2
    assert too_long[0].error is not None and too_long[0].error.startswith(
        "HTTP 400: This model's maximum context"
    )


async def test_discovery_and_unreachable_targets() -> None:
    async with serve(create_app(SimConfig(model="served", max_model_len=64))) as url:
        assert await discover_model(url) == "served"
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReplayError, match="cannot reach"):
        await discover_model(dead)
    results = await replay(_requests(2), target=dead, model="m", timeout_s=5.0)
    assert all(not r.ok and r.error and r.error.startswith("connection failed") for r in results)


async def test_duration_stops_sending() -> None:
    requests = [TraceRequest(0.0, 5, 1), TraceRequest(0.02, 5, 1), TraceRequest(30.0, 5, 1)]
    async with serve(create_app(SimConfig(model="m", max_model_len=64))) as url:
        results = await replay(requests, target=url, model="m", duration_s=0.5)
    assert len(results) == 2 and all(r.ok for r in results)


class _Recorder:
    """A fake OpenAI server whose stream the test chooses; remembers the bodies it got."""

    def __init__(self, events: list[str], *, hang: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._events = events
        self._hang = hang

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/completions", self._complete, methods=["POST"])])

    async def _complete(self, request: Request) -> Response:
        self.bodies.append(json.loads(await request.body()))
        return StreamingResponse(self._stream(), media_type="text/event-stream")

    async def _stream(self) -> AsyncIterator[str]:
        for event in self._events:
            yield f"data: {event}\n\n"
        if self._hang:
            await asyncio.sleep(3600)


def _chunk(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "text": text}]})


async def test_body_flags_usage_and_cached_tokens() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4}}
    server = _Recorder(
        [_chunk("a"), _chunk(""), _chunk(" b"), json.dumps({"choices": [], "usage": usage}), "[DONE]"]
    )
    async with serve(server.app()) as url:
        [with_extras] = await replay(
            _requests(1, output_tokens=7), target=url, model="m", extra_body={"top_p": 0.5}
        )
        [plain] = await replay(_requests(1), target=url, model="m", vllm_extras=False)
    first, second = server.bodies
    assert (first["max_tokens"], first["min_tokens"], first["ignore_eos"], first["top_p"]) == (
        7,
        7,
        True,
        0.5,
    )
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert "min_tokens" not in second and "ignore_eos" not in second
    assert (with_extras.output_tokens, with_extras.prompt_tokens, with_extras.cached_tokens) == (7, 9, 4)
    assert len(with_extras.itl_s) == 1  # the empty chunk carries no text
    assert plain.ok


async def test_broken_and_hanging_streams_fail() -> None:
    async with serve(_Recorder([_chunk("a"), _chunk("b")]).app()) as url:
        [truncated] = await replay(_requests(1), target=url, model="m")
    async with serve(_Recorder([json.dumps({"error": {"message": "engine died"}})]).app()) as url:
        [errored] = await replay(_requests(1), target=url, model="m")
    async with serve(_Recorder([_chunk("a")], hang=True).app()) as url:
        [hung] = await replay(_requests(1), target=url, model="m", timeout_s=0.3)
    assert (truncated.ok, truncated.error, truncated.output_tokens) == (
        False,
        "stream ended before [DONE]",
        2,
    )
    assert (errored.ok, errored.error) == (False, "error in stream: engine died")
    assert (hung.ok, hung.error) == (False, "timed out after 0.3 s")
    assert hung.ttft_s is not None and hung.e2e_s is None


async def test_shared_hash_ids_become_prefix_cache_hits_on_the_sim() -> None:
    """Trace prefix sharing survives the trip through text: the sim reports the shared blocks as cached."""
    rows = [
        TraceRequest(0.0, 1024, 2, hash_ids=(7, 8)),
        TraceRequest(0.5, 1100, 2, hash_ids=(7, 8, 9)),
        TraceRequest(1.0, 600, 2, hash_ids=(10, 11)),
    ]
    config = SimConfig(model="m", max_model_len=4096, time_scale=50.0)
    async with serve(create_app(config)) as url:
        results = await replay(rows, target=url, model="m")
    assert [r.ok for r in results] == [True, True, True]
    assert [r.cached_tokens or 0 for r in results] == [0, 1024, 0]
