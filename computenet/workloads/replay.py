"""Real-time replay of a trace against any OpenAI-compatible endpoint.

Each request is sent at its arrival time whether or not earlier ones have
finished (an open loop, as production traffic is), streamed, and timed from
the client's side: TTFT at the first chunk that carries text, ITL between such
chunks, E2E at `[DONE]`. Whatever goes wrong with one request (an HTTP error,
a refused connection, a timeout, a broken stream) becomes a failed result with
a short message, so one bad request never ends a run and the summary counts
failures by cause. Prompts come from `prompts.prompt_text`, so requests that
share prefix hashes in the trace share prompt text on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from .prompts import prompt_text
from .stats import RequestResult
from .traces import TraceRequest

Api = Literal["completions", "chat"]
DEFAULT_TIMEOUT_S = 300.0
DISCOVERY_TIMEOUT_S = 10.0
_ERROR_CHARS = 200
_log = logging.getLogger(__name__)


class ReplayError(Exception):
    """The run cannot start: the target is unreachable or names no model."""


def base_url(target: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean the same server."""
    base = target.strip().rstrip("/")
    return base.removesuffix("/v1")


async def discover_model(target: str, *, model: str | None = None, api_key: str | None = None) -> str:
    """`model`, or the first id of `GET /v1/models`; `ReplayError` when the target cannot be reached."""
    url = base_url(target) + "/v1/models"
    async with _client(api_key, DISCOVERY_TIMEOUT_S) as client:
        try:
            response = await client.get(url)
        except httpx.HTTPError as exc:
            raise ReplayError(f"cannot reach {target}: {_transport_error(exc)}") from None
    if model is not None:
        return model  # reachable is all that was needed; the server may not list models at all
    if response.status_code >= 400:
        raise ReplayError(f"GET {url} answered {_http_error(response)}; pass --model to name the model")
    try:
        return str(response.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ReplayError(f"GET {url} listed no models; pass --model to name the model") from None


async def replay(
    requests: Sequence[TraceRequest],
    *,
    target: str,
    model: str | None = None,
    api: Api = "completions",
    api_key: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    duration_s: float | None = None,
    vllm_extras: bool = True,
    extra_body: Mapping[str, Any] | None = None,
) -> list[RequestResult]:
    """Send every request at its `arrival_s` from now; results in sending order.

    Sending stops at `duration_s` of wall time (requests not sent yet get no result);
    requests in flight are still awaited, each for at most `timeout_s`. `vllm_extras`
    adds `min_tokens` and `ignore_eos` so every request generates exactly its output length.
    """
    if model is None:
        model = await discover_model(target, api_key=api_key)
    shape = _Shape(base_url(target), model, api, vllm_extras, dict(extra_body or {}))
    async with _client(api_key, None) as client:
        return await _send_all(client, shape, requests, timeout_s, duration_s)


@dataclass(frozen=True)
class _Shape:
    """How every request of a run is addressed and which fields its body carries."""

    base: str
    model: str
    api: Api
    vllm_extras: bool
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base + ("/v1/chat/completions" if self.api == "chat" else "/v1/completions")

    def body(self, request: TraceRequest, index: int) -> dict[str, Any]:
        text = prompt_text(request, index)
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.output_tokens}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        if self.vllm_extras:
            body |= {"min_tokens": request.output_tokens, "ignore_eos": True}
        return body | self.extra_body


def _client(api_key: str | None, timeout_s: float | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    return httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout_s)


async def _send_all(
    client: httpx.AsyncClient,
    shape: _Shape,
    requests: Sequence[TraceRequest],
    timeout_s: float,
    duration_s: float | None,
) -> list[RequestResult]:
    tasks: list[asyncio.Task[RequestResult]] = []
    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index, request in enumerate(requests):
            if duration_s is not None and request.arrival_s >= duration_s:
                break
            body = shape.body(request, index)  # built before its time, so building adds no lag
            await asyncio.sleep(max(0.0, request.arrival_s - (time.perf_counter() - start)))
            sent_s = time.perf_counter() - start
            if duration_s is not None and sent_s >= duration_s:
                break
            lag_s = max(0.0, sent_s - request.arrival_s)
            tasks.append(group.create_task(_send(client, shape.url, body, timeout_s, sent_s, lag_s)))
    return [task.result() for task in tasks]


async def _send(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout_s: float, sent_s: float, lag_s: float
) -> RequestResult:
    clock = _StreamClock(time.perf_counter())
    try:
        async with asyncio.timeout(timeout_s):
            error = await _stream(client, url, body, clock)
    except TimeoutError:
        error = f"timed out after {timeout_s:g} s"
    except httpx.HTTPError as exc:
        error = _transport_error(exc)
    except Exception as exc:  # the request boundary: one odd response must not end the run
        _log.debug("request to %s failed", url, exc_info=True)
        error = _short(f"client error: {type(exc).__name__}: {exc}")
    return clock.result(error, sent_s, lag_s)


async def _stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], clock: _StreamClock
) -> str | None:
    """Read one streamed response into `clock`; the error message, or None when it ended with `[DONE]`."""
    async with client.stream("POST", url, json=body) as response:
        if response.status_code >= 400:
            await response.aread()
            return _http_error(response)
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                clock.done = time.perf_counter()
                return None
            error = clock.chunk(payload)
            if error is not None:
                return error
    return "stream ended before [DONE]"


@dataclass
class _StreamClock:
    """Timestamps and counts of one streamed response."""

    start: float
    first: float | None = None
    last: float | None = None
    done: float | None = None
    itl_s: list[float] = field(default_factory=list)
    content_chunks: int = 0
    usage: dict[str, Any] = field(default_factory=dict)

    def chunk(self, payload: str) -> str | None:
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            return "stream carried a chunk that is not JSON"
        if not isinstance(chunk, dict):
            return "stream carried a chunk that is not a JSON object"
        if chunk.get("error"):
            return "error in stream: " + _short(_message_of(chunk))
        if any(_text_of(choice) for choice in chunk.get("choices") or ()):
            self._content_at(time.perf_counter())
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        return None

    def _content_at(self, now: float) -> None:
        if self.first is None:
            self.first = now
        elif self.last is not None:
            self.itl_s.append(now - self.last)
        self.last = now
        self.content_chunks += 1

    def result(self, error: str | None, sent_s: float, lag_s: float) -> RequestResult:
        ok = error is None and self.done is not None
        completion = self.usage.get("completion_tokens")
        details = self.usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return RequestResult(
            ok=ok,
            ttft_s=None if self.first is None else self.first - self.start,
            e2e_s=None if self.done is None else self.done - self.start,
            output_tokens=completion if isinstance(completion, int) else self.content_chunks,
            itl_s=self.itl_s,
            error=None if ok else error or "unknown error",
            prompt_tokens=_int(self.usage.get("prompt_tokens")),
            sent_s=sent_s,
            send_lag_s=lag_s,
            cached_tokens=cached if isinstance(cached, int) else None,
        )


def _text_of(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("reasoning_content"))
    return bool(choice.get("text"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _http_error(response: httpx.Response) -> str:
    try:
        message = _message_of(response.json())
    except ValueError:
        message = response.text
    return f"HTTP {response.status_code}: {_short(message) or response.reason_phrase}"


def _message_of(body: Any) -> str:
    """OpenAI's `{"error": {"message"}}`, or the other shapes servers answer with."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)
        return str(error)
    return str(body)


def _transport_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {_short(str(exc)) or type(exc).__name__}"
    return _short(f"{type(exc).__name__}: {exc}")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."
