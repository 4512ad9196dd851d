"""Open-loop streaming replay of prepared requests, one TCP connection per request by default.

`computenet.workloads.replay` does the same with one keep-alive httpx client. Two things
made this benchmark need its own sender (everything else — prompts, `RequestResult`,
`summarize` — is the library's):

* **Connections.** sglang-router 0.3.2 holds the first chunk of a stream ~40 ms on a
  reused connection (Nagle against the client's delayed ACK; see docs/benchmarks.md,
  "Gateway overhead"). Under a time-compressed replay every real millisecond counts
  `time_scale` times, so that stall would become a few hundred simulated milliseconds of
  TTFT that have nothing to do with routing. A new connection per request (loopback: a
  ~0.1 ms handshake) avoids it for every router alike; `keep_alive=True` shows it.
* **CPU.** aiohttp parses a stream for less CPU than httpx, and on a 2-core machine the
  client shares a core with the router under test.

Bodies are built before the clock starts. Sending stops at `stop_s`; requests in flight are
then awaited for at most `timeout_s` each. `probe` measures, on idle replicas, the TTFT a
router adds to a request (its parsing, tokenizing, routing and proxying), which a
time-compressed replay multiplies like everything else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from computenet.workloads import RequestResult


@dataclass(frozen=True)
class Prepared:
    """One request ready to send: when (seconds from the start) and the JSON body."""

    at_s: float
    body: bytes


async def replay(
    url: str, requests: Sequence[Prepared], *, timeout_s: float, stop_s: float, keep_alive: bool = False
) -> list[RequestResult]:
    connector = aiohttp.TCPConnector(limit=0, force_close=not keep_alive)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: list[asyncio.Task[RequestResult]] = []
        start = time.perf_counter()
        for request in requests:
            if request.at_s >= stop_s:
                break
            await asyncio.sleep(max(0.0, request.at_s - (time.perf_counter() - start)))
            sent_s = time.perf_counter() - start
            lag_s = max(0.0, sent_s - request.at_s)
            tasks.append(asyncio.create_task(_send(session, url, request.body, timeout_s, sent_s, lag_s)))
        return list(await asyncio.gather(*tasks))


async def _send(
    session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float, sent_s: float, lag_s: float
) -> RequestResult:
    t0 = time.perf_counter()
    first: float | None = None
    done: float | None = None
    chunks = 0
    usage: dict[str, object] = {}
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            headers = {"content-type": "application/json"}
            async with session.post(url, data=body, headers=headers) as response:
                if response.status >= 400:
                    text = (await response.text())[:200]
                    return _failed(f"HTTP {response.status}: {' '.join(text.split())}", sent_s, lag_s)
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = time.perf_counter()
                        break
                    chunk = json.loads(payload)
                    choices = chunk.get("choices") or ()
                    if any(c.get("text") or (c.get("delta") or {}).get("content") for c in choices):
                        first = first or time.perf_counter()
                        chunks += 1
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
    except TimeoutError:
        error = f"timed out after {timeout_s:g} s"
    except (aiohttp.ClientError, ValueError, OSError) as exc:  # one bad request must not end the run
        error = f"{type(exc).__name__}: {exc}"[:200]
    if error is None and done is None:
        error = "stream ended before [DONE]"
    return _result(t0, first, done, chunks, usage, error, sent_s, lag_s)


async def probe(urls: Sequence[str], bodies: Sequence[Sequence[bytes]]) -> list[list[float]]:
    """TTFT (wall s) of `bodies[i][j]` sent alone to `urls[j]`, for every i in turn: one request at a time."""
    out: list[list[float]] = [[] for _ in urls]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for row in bodies:
            for j, (url, body) in enumerate(zip(urls, row, strict=True)):
                result = await _send(session, url, body, 30.0, 0.0, 0.0)
                if result.ok and result.ttft_s is not None:
                    out[j].append(result.ttft_s)
    return out


def _result(
    t0: float,
    first: float | None,
    done: float | None,
    chunks: int,
    usage: dict[str, object],
    error: str | None,
    sent_s: float,
    lag_s: float,
) -> RequestResult:
    completion = usage.get("completion_tokens")
    prompt = usage.get("prompt_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return RequestResult(
        ok=error is None,
        ttft_s=None if first is None else first - t0,
        e2e_s=None if done is None else done - t0,
        output_tokens=completion if isinstance(completion, int) else chunks,
        error=error,
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        sent_s=sent_s,
        send_lag_s=lag_s,
        cached_tokens=cached if isinstance(cached, int) else None,
    )


def _failed(error: str, sent_s: float, lag_s: float) -> RequestResult:
    return RequestResult(
        ok=False, ttft_s=None, e2e_s=None, output_tokens=0, error=error, sent_s=sent_s, send_lag_s=lag_s
    )
