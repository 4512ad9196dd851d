"""Steady streaming traffic through a gateway: one request every `interval_s`, whatever the earlier ones
are doing (open loop), each recorded with when it was sent, when it ended and how."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import httpx

Outcome = Literal["ok", "failed", "broken"]  # failed: before its first byte; broken: cut after it


@dataclass(frozen=True)
class Sent:
    sent_at: float  # time.monotonic()
    ended_at: float
    outcome: Outcome
    detail: str = ""


@dataclass
class Traffic:
    url: str  # the gateway's
    model: str
    interval_s: float = 0.1
    timeout_s: float = 30.0
    requests: list[Sent] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop` is set, then wait for the requests in flight."""
        body = {"model": self.model, "prompt": "hello", "max_tokens": 16, "stream": True}
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            in_flight: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            while not stop.is_set():
                task = asyncio.create_task(self._one(client, body))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                next_at += self.interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*in_flight)

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[None]:
        """Run in a thread of its own while the block runs (for a caller that is not async)."""
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        thread = threading.Thread(target=loop.run_until_complete, args=(self.run(stop),), daemon=True)
        thread.start()
        try:
            yield
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join()
            loop.close()

    def first_ok_sent_after(self, moment: float) -> Sent | None:
        return min(
            (r for r in self.requests if r.outcome == "ok" and r.sent_at >= moment),
            default=None,
            key=lambda r: r.ended_at,
        )

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.requests if r.outcome == outcome)

    async def _one(self, client: httpx.AsyncClient, body: dict[str, object]) -> None:
        sent_at, first_byte, done = time.monotonic(), False, False
        try:
            async with client.stream("POST", f"{self.url}/v1/completions", json=body) as response:
                if response.status_code != 200:
                    detail = f"{response.status_code}: {(await response.aread())[:200]!r}"
                    self.requests.append(Sent(sent_at, time.monotonic(), "failed", detail))
                    return
                async for line in response.aiter_lines():
                    first_byte = True
                    done = done or line.strip() == "data: [DONE]"
        except httpx.HTTPError as exc:
            ended: Outcome = "broken" if first_byte else "failed"
            self.requests.append(Sent(sent_at, time.monotonic(), ended, repr(exc)))
            return
        outcome: Outcome = "ok" if done else "broken"
        self.requests.append(Sent(sent_at, time.monotonic(), outcome, "" if done else "no [DONE]"))
