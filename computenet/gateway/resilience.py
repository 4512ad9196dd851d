"""Circuit breakers per endpoint, and the backoff between retries.

A breaker keeps a failing replica or provider out of rotation so requests stop paying
its connect timeout: it opens after `consecutive_failures` failures in a row, or when
more than `error_rate` of at least `min_calls` recent calls failed. After `open_s` it
lets one probe through (half-open); the probe's outcome closes it or opens it again
for twice as long (up to `max_open_s`). An upstream's `Retry-After` opens it for
exactly that long, because the upstream said when to come back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, TypeVar


class _Keyed(Protocol):
    @property
    def replica(self) -> str: ...


K = TypeVar("K", bound=_Keyed)


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_calls: int = 20
    window_s: float = 10.0
    open_s: float = 5.0
    max_open_s: float = 60.0


class CircuitBreaker:
    __slots__ = (
        "_calls",
        "_clock",
        "_failures",
        "_open_for",
        "_probing",
        "_settings",
        "_streak",
        "_until",
        "_window_start",
        "state",
    )

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._streak = 0
        self._calls = 0
        self._failures = 0
        self._window_start = clock()
        self._until = 0.0
        self._open_for = settings.open_s
        self._probing = False

    def allows(self) -> bool:
        """Whether a request may go to this endpoint now (a half-open breaker admits one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() < self._until:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        if self.state is BreakerState.OPEN:
            return  # a request sent before it opened; only the half-open probe may close it
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            self._open_for = self._settings.open_s
            self._probing = False
        self._streak = 0
        self._count(failed=False)

    def failure(self, retry_after_s: float | None = None) -> None:
        s = self._settings
        if retry_after_s is not None and retry_after_s > 0:
            self._open(min(retry_after_s, s.max_open_s), exact=True)
            return
        if self.state is BreakerState.HALF_OPEN:
            self._open(min(self._open_for * 2, s.max_open_s))
            return
        if self.state is BreakerState.OPEN:
            return  # already out of rotation; a late failure changes nothing
        self._streak += 1
        self._count(failed=True)
        if self._streak >= s.consecutive_failures or (
            self._calls >= s.min_calls and self._failures > s.error_rate * self._calls
        ):
            self._open(self._open_for)

    def release_probe(self) -> None:
        """A probe that ended with neither verdict (the client left) frees the slot."""
        self._probing = False

    def _open(self, seconds: float, *, exact: bool = False) -> None:
        self.state = BreakerState.OPEN
        self._until = self._clock() + seconds
        if not exact:
            self._open_for = seconds
        self._probing = False
        self._streak = self._calls = self._failures = 0

    def _count(self, *, failed: bool) -> None:
        now = self._clock()
        if now - self._window_start > self._settings.window_s:
            self._window_start, self._calls, self._failures = now, 0, 0
        self._calls += 1
        self._failures += failed


class Breakers:
    """One breaker per endpoint key (a replica name or `provider/<name>`), made on first use."""

    def __init__(self, settings: BreakerSettings | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self._by_key: dict[str, CircuitBreaker] = {}

    def get(self, key: str) -> CircuitBreaker:
        breaker = self._by_key.get(key)
        if breaker is None:
            breaker = self._by_key[key] = CircuitBreaker(self.settings)
        return breaker

    def first_allowed(
        self, candidates: tuple[K, ...], pick: Callable[[tuple[K, ...]], K | None], tried: set[str]
    ) -> K | None:
        """`pick`'s choice among `candidates` whose breaker lets a request through, picking again
        without the ones it does not (they join `tried`). None when none is left, or when `pick`
        chooses nothing."""
        while candidates:
            chosen = pick(candidates)
            if chosen is None:
                return None
            if self.get(chosen.replica).allows():
                return chosen
            tried.add(chosen.replica)
            candidates = tuple(c for c in candidates if c is not chosen)
        return None

    def states(self) -> dict[str, BreakerState]:
        return {key: b.state for key, b in self._by_key.items()}

    def forget(self, keep: set[str]) -> None:
        """Drop breakers of endpoints that no longer exist, so the map stays bounded."""
        for key in [k for k in self._by_key if k not in keep]:
            del self._by_key[key]


def backoff_delay(attempt: int, *, base_s: float = 0.025, cap_s: float = 1.0) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
    return random.uniform(0, min(cap_s, base_s * (2 ** (attempt - 1))))


def parse_retry_after(value: bytes | None) -> float | None:
    """Seconds from a `Retry-After` header (the delta form; HTTP dates are rare from APIs)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
