"""Admission per model: when all of a model's endpoints are saturated, requests wait at the gateway in a
bounded priority queue instead of piling onto replicas, and the lowest priority is shed first.

Why this shape: the common case (a free slot, nobody waiting) is an integer increment with no future,
timer or lock. Only a request that has to wait pays for a future and a timer. A slot freed by `leave()`
(or by raising `capacity`) is handed straight to the best waiter, highest priority first and FIFO within
a priority, so a newcomer can never overtake someone already queued.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import deque

PRIORITY_HEADER = "x-computenet-priority"
PRIORITY_NAMES = {"low": -5, "normal": 0, "high": 5}
MIN_PRIORITY, MAX_PRIORITY = -10, 10
UNLIMITED = sys.maxsize  # the capacity of a gate whose model's concurrency is not limited (yet)

_INTEGER = re.compile(r"[+-]?[0-9]{1,3}")


def parse_priority(header_value: str | None) -> int:
    """The `x-computenet-priority` header as an int; absent or empty means 0 ("normal")."""
    if header_value is None:
        return 0
    value = header_value.strip().lower()
    if not value:
        return 0
    if value in PRIORITY_NAMES:
        return PRIORITY_NAMES[value]
    if _INTEGER.fullmatch(value) and MIN_PRIORITY <= (number := int(value)) <= MAX_PRIORITY:
        return number
    raise ValueError(
        f"{PRIORITY_HEADER} must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY} "
        f"or one of low, normal, high; got {header_value!r}"
    )


class Shed(Exception):
    """The request was not admitted: 429 when the queue is full of work of higher (or equal) priority,
    503 when it waited `max_wait_s` without getting a slot."""

    def __init__(self, status: int, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s


class ModelGate:
    """At most `capacity` requests in flight for one model; the rest wait, at most `max_queue` of them."""

    def __init__(self, *, capacity: int, max_queue: int = 1024, max_wait_s: float = 30.0) -> None:
        if capacity < 0 or max_queue < 0 or max_wait_s <= 0:
            raise ValueError(
                f"need capacity >= 0, max_queue >= 0 and max_wait_s > 0; "
                f"got {capacity}, {max_queue} and {max_wait_s}"
            )
        self._capacity = capacity
        self._max_queue = max_queue
        self._max_wait_s = max_wait_s
        self._in_flight = 0
        self._queued = 0
        # priority -> its waiters, oldest first; a priority with no waiter has no entry, so that
        # min() and max() over the keys see at most the 21 levels that parse_priority allows.
        self._levels: dict[int, deque[asyncio.Future[None]]] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"capacity must be >= 0; got {value}")
        self._capacity = value
        self._admit_waiters()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return self._queued

    async def enter(self, priority: int = 0) -> None:
        """Take a slot, waiting for one if needed; raises `Shed`. Pair every return with one `leave()`."""
        if self._in_flight < self._capacity and not self._queued:
            self._in_flight += 1
            return
        await self._wait(priority)

    def leave(self) -> None:
        """Give a slot back; the best waiter gets it at once."""
        if self._in_flight <= 0:
            raise RuntimeError("ModelGate.leave() without a matching enter()")
        self._in_flight -= 1
        if self._queued:
            self._admit_waiters()

    async def _wait(self, priority: int) -> None:
        self._make_room(priority)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._levels.setdefault(priority, deque()).append(waiter)
        self._queued += 1
        timer = loop.call_later(self._max_wait_s, self._expire, priority, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # the caller went away while queued
                self._remove(priority, waiter)
            elif waiter.exception() is None:  # admitted in the same instant: pass the slot on
                self.leave()
            raise
        finally:
            timer.cancel()

    def _make_room(self, priority: int) -> None:
        if self._queued < self._max_queue:
            return
        lowest = min(self._levels, default=None)
        if lowest is None or priority <= lowest:
            raise Shed(429, f"the queue is full ({self._max_queue}) of requests of priority >= {priority}")
        waiters = self._levels[lowest]
        victim = waiters.pop()  # the newest of the lowest priority: the others waited longer
        if not waiters:
            del self._levels[lowest]
        self._queued -= 1
        victim.set_exception(Shed(429, f"shed for a request of higher priority than {lowest}"))

    def _expire(self, priority: int, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        self._remove(priority, waiter)
        waiter.set_exception(Shed(503, f"no capacity became free within {self._max_wait_s:g} s"))

    def _remove(self, priority: int, waiter: asyncio.Future[None]) -> None:
        waiters = self._levels[priority]
        waiters.remove(waiter)
        if not waiters:
            del self._levels[priority]
        self._queued -= 1

    def _admit_waiters(self) -> None:
        while self._queued and self._in_flight < self._capacity:
            best = max(self._levels)
            waiters = self._levels[best]
            waiter = waiters.popleft()
            if not waiters:
                del self._levels[best]
            self._queued -= 1
            self._in_flight += 1  # the slot is the waiter's from now on, before it even resumes
            waiter.set_result(None)


class Gates:
    """One `ModelGate` per model name, created on first use with `default_capacity` until the gateway
    sets the model's capacity from its endpoints."""

    def __init__(
        self, *, default_capacity: int = UNLIMITED, max_queue: int = 1024, max_wait_s: float = 30.0
    ) -> None:
        self._default_capacity = default_capacity
        self._max_queue = max_queue
        self._max_wait_s = max_wait_s
        self._gates: dict[str, ModelGate] = {}

    def gate(self, model: str) -> ModelGate:
        gate = self._gates.get(model)
        if gate is None:
            gate = self._gates[model] = ModelGate(
                capacity=self._default_capacity, max_queue=self._max_queue, max_wait_s=self._max_wait_s
            )
        return gate

    def items(self) -> list[tuple[str, ModelGate]]:
        return list(self._gates.items())

    def set_capacity(self, model: str, n: int) -> None:
        self.gate(model).capacity = n
