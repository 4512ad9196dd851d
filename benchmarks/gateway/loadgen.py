"""A closed-loop HTTP/1.1 load generator light enough to share one core with the fake upstream.

    python benchmarks/gateway/loadgen.py --url http://127.0.0.1:8100 --concurrency 64 --duration-s 10
        [--kind json|stream|mixed] [--requests N] [--api-key KEY] [--handshake]

N keep-alive connections, each sending its next request as soon as the last one's final
byte arrived. A raw `asyncio.Protocol` client on uvloop with httptools parsing: aiohttp
spends several times more CPU per request, and on the shared core that would be the
ceiling of every c=64 figure (`--client aiohttp` keeps it for comparison).

A request fails on a connection error, a status other than 200, a JSON body without
`choices`, or a stream without 64 data events ending in `data: [DONE]`. The phase stops
after `--requests` or `--duration-s`, whichever comes first.

With `--handshake`, after the warm-up it prints `warm` and waits for a line on stdin, so
the caller can sample CPU times exactly around the measured part, and after the results
it waits for stdin to close before exiting. It prints
one JSON line of results: latencies are to the last byte, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

STREAM_EVENTS = 65  # 64 tokens and [DONE]; a usage event on top is allowed
MIXED_STREAM_EVERY = 4  # in mixed load, one connection in four streams


def request_bytes(host: str, path: str, body: dict[str, Any], api_key: str | None) -> bytes:
    payload = orjson.dumps(body)
    auth = f"authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"accept: */*\r\n{auth}content-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def body_for(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    if stream:
        body["stream"] = True
    return body


def check(status: int, body: bytes, stream: bool) -> str | None:
    """Why a response does not count as a success, or None."""
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    if not stream:
        return None if b'"choices"' in body else f"no choices in {body[:200]!r}"
    if not body.rstrip().endswith(b"data: [DONE]"):
        return f"stream does not end in [DONE]: ...{body[-200:]!r}"
    events = body.count(b"data:")
    return None if events >= STREAM_EVENTS else f"stream has {events} events"


def kind_of(kind: str, connection: int) -> str:
    """What connection number `connection` sends: in mixed load, one in four streams."""
    if kind != "mixed":
        return kind
    return "stream" if connection % MIXED_STREAM_EVERY == MIXED_STREAM_EVERY - 1 else "json"


class Client(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.body = bytearray()
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def send(self, raw: bytes, timeout_s: float) -> tuple[int, bytes]:
        assert self.transport is not None
        self.body = bytearray()
        self.parser = httptools.HttpResponseParser(self)
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, self._fail, TimeoutError(f"no response in {timeout_s} s"))
        self.transport.write(raw)
        try:
            status = await waiter
        finally:
            timer.cancel()
        return status, bytes(self.body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Tally:
    """What one phase saw; latencies by kind, in seconds."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"json": [], "stream": []})
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failures += 1
        if len(self.errors) < 5:
            self.errors.append(why)


@dataclass
class Plan:
    host: str
    port: int
    raws: dict[str, bytes]
    concurrency: int
    kind: str
    timeout_s: float


class ClosedLoop:
    """`plan.concurrency` workers, each sending its next request when its last one is answered."""

    plan: Plan

    async def run(self, requests: int, duration_s: float) -> tuple[Tally, float]:
        tally = Tally()
        state = {"left": requests}
        deadline = time.perf_counter() + duration_s
        t0 = time.perf_counter()
        await asyncio.gather(*(self.worker(i, state, deadline, tally) for i in range(self.plan.concurrency)))
        return tally, time.perf_counter() - t0

    async def worker(self, i: int, state: dict[str, int], deadline: float, tally: Tally) -> None:
        raise NotImplementedError


class RawRunner(ClosedLoop):
    """Keeps its connections open across the warm-up and the measured phase."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.clients: list[Client | None] = [None] * plan.concurrency

    async def connect(self) -> Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: Client(loop), self.plan.host, self.plan.port)
        return client

    async def worker(self, i: int, state: dict[str, int], deadline: float, tally: Tally) -> None:
        kind = kind_of(self.plan.kind, i)
        raw = self.plan.raws[kind]
        while state["left"] > 0 and time.perf_counter() < deadline:
            state["left"] -= 1
            t0 = time.perf_counter()
            try:
                client = self.clients[i]
                if client is None or client.closed:
                    client = self.clients[i] = await self.connect()
                status, body = await client.send(raw, self.plan.timeout_s)
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")
                self.drop(i)
                continue
            elapsed = time.perf_counter() - t0
            why = check(status, body, kind == "stream")
            if why is None:
                tally.latencies[kind].append(elapsed)
            else:
                tally.fail(why)
            if not client.keep_alive:
                self.drop(i)

    def drop(self, i: int) -> None:
        client = self.clients[i]
        if client is not None:
            client.close()
        self.clients[i] = None

    def close(self) -> None:
        for i in range(len(self.clients)):
            self.drop(i)


class AiohttpRunner(ClosedLoop):
    """The same closed loop on aiohttp, to compare client costs (`--client aiohttp`)."""

    def __init__(self, plan: Plan, url: str, bodies: dict[str, dict[str, Any]], headers: dict[str, str]):
        self.plan, self.url, self.bodies, self.headers = plan, url, bodies, headers
        self.session: Any = None

    async def run(self, requests: int, duration_s: float) -> tuple[Tally, float]:
        import aiohttp

        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self.plan.concurrency)
            self.session = aiohttp.ClientSession(connector=connector, headers=self.headers)
        return await super().run(requests, duration_s)

    async def worker(self, i: int, state: dict[str, int], deadline: float, tally: Tally) -> None:
        kind = kind_of(self.plan.kind, i)
        payload = orjson.dumps(self.bodies[kind])
        while state["left"] > 0 and time.perf_counter() < deadline:
            state["left"] -= 1
            t0 = time.perf_counter()
            try:
                async with self.session.post(self.url, data=payload) as response:
                    body = await response.read()
                    status = response.status
            except Exception as exc:  # a failed request is a result here, whatever raised it
                tally.fail(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - t0
            why = check(status, body, kind == "stream")
            if why is None:
                tally.latencies[kind].append(elapsed)
            else:
                tally.fail(why)

    def close(self) -> None:
        pass


def percentile_ms(sorted_s: list[float], q: float) -> float | None:
    if not sorted_s:
        return None
    return round(sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000, 4)


def summarise(tally: Tally, elapsed_s: float) -> dict[str, Any]:
    by_kind = {}
    for kind, samples in tally.latencies.items():
        if samples:
            ordered = sorted(samples)
            by_kind[kind] = {
                "ok": len(ordered),
                "p50_ms": percentile_ms(ordered, 0.50),
                "p99_ms": percentile_ms(ordered, 0.99),
                "mean_ms": round(sum(ordered) / len(ordered) * 1000, 4),
            }
    ok = sum(len(samples) for samples in tally.latencies.values())
    return {
        "ok": ok,
        "failed": tally.failures,
        "errors": tally.errors,
        "elapsed_s": round(elapsed_s, 4),
        "rps": round(ok / elapsed_s, 2) if elapsed_s > 0 else None,
        "by_kind": by_kind,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    netloc = f"{host}:{port}"
    bodies = {"json": body_for(args.model, False), "stream": body_for(args.model, True)}
    raws = {kind: request_bytes(netloc, args.path, body, args.api_key) for kind, body in bodies.items()}
    plan = Plan(host, port, raws, args.concurrency, args.kind, args.timeout_s)
    runner: RawRunner | AiohttpRunner
    if args.client == "aiohttp":
        headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        runner = AiohttpRunner(plan, f"http://{netloc}{args.path}", bodies, headers)
    else:
        runner = RawRunner(plan)
    try:
        if args.warmup_requests > 0:
            warm, _ = await runner.run(args.warmup_requests, args.warmup_s)
            if warm.failures and not args.allow_warmup_failures:
                return {"warmup_failed": warm.failures, "errors": warm.errors}
        if args.handshake:
            print("warm", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        tally, elapsed_s = await runner.run(args.requests, args.duration_s)
        return summarise(tally, elapsed_s)
    finally:
        runner.close()
        if isinstance(runner, AiohttpRunner) and runner.session is not None:
            await runner.session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8100")
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--kind", choices=["json", "stream", "mixed"], default="json")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=10**9)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-requests", type=int, default=0)
    parser.add_argument("--warmup-s", type=float, default=5.0, help="cap on the warm-up's length")
    parser.add_argument("--allow-warmup-failures", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--handshake", action="store_true")
    parser.add_argument("--client", choices=["raw", "aiohttp"], default="raw")
    args = parser.parse_args()
    result = uvloop.run(main_async(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    if args.handshake:  # stay until the caller has read our CPU time, i.e. closes stdin
        sys.stdin.read()


if __name__ == "__main__":
    main()
