"""A fake OpenAI upstream that answers at once, so a gateway in front of it is what gets measured.

    python benchmarks/gateway/upstream.py --port 8100 [--model bench-model]

A raw `asyncio.Protocol` HTTP/1.1 server on uvloop with httptools parsing, keep-alive and
TCP_NODELAY; no framework, so one core serves well over ten thousand requests a second.

* `POST /v1/chat/completions`, `/v1/completions`: a 16-token completion with `usage`;
  with `"stream": true`, 64 SSE events of one token each, each its own chunk of a chunked
  response and its own `transport.write` (no delay, but a real 64-chunk stream), then a
  usage event when `stream_options.include_usage` is set, then `data: [DONE]`.
* `POST /v1/embeddings`: an 8-dimensional embedding.
* `GET /v1/models`, and what the Rust routers probe on a worker (`/health`,
  `/get_model_info`, `/get_server_info`).

Prints `ready <port>` on stdout once listening; SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from typing import Any, cast

import httptools
import orjson
import uvloop

COMPLETION_TOKENS = 16
STREAM_CHUNKS = 64
PROMPT_TOKENS = 8
TOKEN = " hi"
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}
STREAM_USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": STREAM_CHUNKS,
    "total_tokens": PROMPT_TOKENS + STREAM_CHUNKS,
}
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
DONE = b"data: [DONE]\n\n"


def response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: "
        + connection
        + b"\r\n\r\n"
        + body
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def sse(event: dict[str, Any]) -> bytes:
    return chunk(b"data: " + orjson.dumps(event) + b"\n\n")


class Canned:
    """Bodies for one model name, built once: the upstream must cost next to nothing."""

    def __init__(self, model: str) -> None:
        created = int(time.time())
        text = TOKEN * COMPLETION_TOKENS
        self.chat = orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length",
                    }
                ],
                "usage": USAGE,
            }
        )
        self.completion = orjson.dumps(
            {
                "id": "cmpl-bench",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
                "usage": USAGE,
            }
        )
        self.chat_stream = [self._chat_event(model, created, i) for i in range(STREAM_CHUNKS)]
        self.completion_stream = [self._completion_event(model, created, i) for i in range(STREAM_CHUNKS)]
        self.chat_usage = sse(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": STREAM_USAGE,
            }
        )
        self.completion_usage = sse(
            {
                "id": "cmpl-bench",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": STREAM_USAGE,
            }
        )

    @staticmethod
    def _chat_event(model: str, created: int, i: int) -> bytes:
        delta = {"role": "assistant", "content": TOKEN} if i == 0 else {"content": TOKEN}
        finish = "length" if i == STREAM_CHUNKS - 1 else None
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }
        )

    @staticmethod
    def _completion_event(model: str, created: int, i: int) -> bytes:
        finish = "length" if i == STREAM_CHUNKS - 1 else None
        choice = {"index": 0, "text": TOKEN, "logprobs": None, "finish_reason": finish}
        return sse(
            {
                "id": "cmpl-bench",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
        )


class Upstream:
    """What the server answers; shared by every connection."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._canned = {model: Canned(model)}
        self.unknown: dict[tuple[bytes, bytes], int] = {}
        models = orjson.dumps(
            {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "bench"}]}
        )
        self.gets = {
            b"/v1/models": models,
            b"/health": b"{}",
            b"/health_generate": b"{}",
            b"/get_model_info": orjson.dumps({"model_path": model, "is_generation": True}),
            b"/get_server_info": orjson.dumps({"model_path": model, "served_model_name": model}),
        }
        # sglang-router asks for the newer names first and falls back to the get_ ones.
        self.gets[b"/model_info"] = self.gets[b"/get_model_info"]
        self.gets[b"/server_info"] = self.gets[b"/get_server_info"]

    def canned(self, model: str) -> Canned:
        found = self._canned.get(model)
        if found is None:
            if len(self._canned) >= 16:  # a client inventing names must not grow this without bound
                return self._canned[self.model]
            found = self._canned[model] = Canned(model)
        return found

    def get(self, path: bytes) -> bytes | None:
        return self.gets.get(path)

    def not_found(self, method: bytes, path: bytes) -> bytes:
        """Say once on stderr what a gateway asked for that we lack: a peer may need it."""
        key = (method, path)
        if key in self.unknown:
            self.unknown[key] += 1
        elif len(self.unknown) < 100:
            self.unknown[key] = 1
            print(
                f"upstream: no route for {method.decode()} {path.decode(errors='replace')}", file=sys.stderr
            )
        return b'{"error":"not found"}'


class Connection(asyncio.Protocol):
    """One keep-alive client connection; requests are answered in order, as they complete."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(response(b"400 Bad Request", b'{"error":"bad request"}', False))
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        keep_alive = self.parser.should_keep_alive()
        path = self.url.split(b"?", 1)[0]
        if self.parser.get_method() == b"GET":
            found = self.upstream.get(path)
            if found is None:
                transport.write(response(b"404 Not Found", self.upstream.not_found(b"GET", path), keep_alive))
            else:
                transport.write(response(b"200 OK", found, keep_alive))
        else:
            self.post(transport, path, keep_alive)
        if not keep_alive:
            transport.close()

    def post(self, transport: asyncio.Transport, path: bytes, keep_alive: bool) -> None:
        try:
            request = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            transport.write(
                response(b"400 Bad Request", b'{"error":"body is not a JSON object"}', keep_alive)
            )
            return
        canned = self.upstream.canned(str(request.get("model") or self.upstream.model))
        if path == b"/v1/embeddings":
            transport.write(response(b"200 OK", self.embedding(request), keep_alive))
            return
        chat = path == b"/v1/chat/completions"
        if not chat and path != b"/v1/completions":
            transport.write(response(b"404 Not Found", self.upstream.not_found(b"POST", path), keep_alive))
            return
        if not request.get("stream"):
            transport.write(response(b"200 OK", canned.chat if chat else canned.completion, keep_alive))
            return
        transport.write(STREAM_HEAD)
        for event in canned.chat_stream if chat else canned.completion_stream:
            transport.write(event)
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            transport.write(canned.chat_usage if chat else canned.completion_usage)
        transport.write(chunk(DONE))
        transport.write(b"0\r\n\r\n")

    def embedding(self, request: dict[str, Any]) -> bytes:
        return orjson.dumps(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 8}],
                "model": request.get("model") or self.upstream.model,
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )


async def serve(host: str, port: int, model: str) -> None:
    loop = asyncio.get_running_loop()
    upstream = Upstream(model)
    server = await loop.create_server(lambda: Connection(upstream), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    for (method, path), count in upstream.unknown.items():
        print(f"upstream: {count} x {method.decode()} {path.decode(errors='replace')} (404)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--model", default="bench-model")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.model))
    sys.exit(0)


if __name__ == "__main__":
    main()
