"""The few ASGI messages the gateway sends, built once and cheaply.

The data plane is a plain ASGI callable, not a framework app: on a path that must
cost well under a millisecond of CPU, a router, a Request object and a Response
class per call are most of the bill.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def json_error(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    """OpenAI's error shape, so SDKs raise their usual exception types."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = JSON,
) -> None:
    out = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if headers:
        out += headers
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def start_stream(send: Send, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers})
