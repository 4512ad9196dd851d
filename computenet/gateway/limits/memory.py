"""Rate limits and budgets kept in the gateway process: right when one gateway serves the fleet.

No locks: every method runs to completion without awaiting, so the event loop makes each call
atomic. Memory stays bounded by what is in use: a bucket that has refilled to full is the same as
no bucket and is dropped, and the account of a period that ended (plus a grace) is dropped too.
The clocks are parameters so tests can move time without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .accounts import (
    EPSILON_USD,
    GRACE_S,
    RESERVATION_SLOTS,
    over_limit,
    period_window,
    refusal,
    tightest_caps,
)
from .base import Admission, BudgetCap, Hold, Limit, Period, Reservation
from .buckets import TOKENS, admission, buckets_of, refill, wait_s


@dataclass(slots=True)
class _BucketState:
    level: float
    at_s: float
    capacity: int


class MemoryRateLimiter:
    """Token buckets in a dict, keyed by (scope, dimension)."""

    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._window_s = window_s
        self._clock = clock
        self._buckets: dict[tuple[str, str], _BucketState] = {}
        self._swept_at_s = clock()

    async def admit(self, limits: Sequence[Limit], estimated_tokens: int) -> Admission:
        buckets = buckets_of(limits, estimated_tokens)
        now_s = self._clock()
        self._sweep(now_s)
        levels = [self._level(b.scope, b.dimension, b.capacity, now_s) for b in buckets]
        waits = [wait_s(level, b, self._window_s) for b, level in zip(buckets, levels, strict=True)]
        if waits and max(waits) > 0:
            worst = waits.index(max(waits))
            return admission(buckets, levels, worst, waits[worst], self._window_s, estimated_tokens)
        charged = [level - b.cost for b, level in zip(buckets, levels, strict=True)]
        for b, level in zip(buckets, charged, strict=True):
            self._buckets[(b.scope, b.dimension)] = _BucketState(level, now_s, b.capacity)
        return admission(buckets, charged, None, 0.0, self._window_s, estimated_tokens)

    async def settle(self, admission: Admission, actual_tokens: int) -> None:
        delta = actual_tokens - admission.estimated_tokens
        if not admission.allowed or admission.unavailable or delta == 0:
            return
        now_s = self._clock()
        for scope, capacity in admission.token_limits:
            level = min(float(capacity), self._level(scope, TOKENS, capacity, now_s) - delta)
            self._buckets[(scope, TOKENS)] = _BucketState(level, now_s, capacity)

    async def close(self) -> None:
        self._buckets.clear()

    def __len__(self) -> int:
        """Buckets held: tests check that idle ones are dropped."""
        return len(self._buckets)

    def _level(self, scope: str, dimension: str, capacity: int, now_s: float) -> float:
        state = self._buckets.get((scope, dimension))
        if state is None:
            return float(capacity)
        return refill(state.level, now_s - state.at_s, capacity, self._window_s)

    def _sweep(self, now_s: float) -> None:
        if now_s - self._swept_at_s < self._window_s:
            return
        self._swept_at_s = now_s
        full = [
            key
            for key, s in self._buckets.items()
            if refill(s.level, now_s - s.at_s, s.capacity, self._window_s) >= s.capacity
        ]
        for key in full:
            del self._buckets[key]


@dataclass(slots=True)
class _Account:
    resets_at: float | None
    spent_usd: float = 0.0
    held_usd: dict[int, float] = field(default_factory=dict)  # reservation slot -> amount held

    def committed_usd(self, oldest_slot: int) -> float:
        """Spend plus live holds; holds of expired slots (never settled) are dropped on the way."""
        for slot in [s for s in self.held_usd if s < oldest_slot]:
            del self.held_usd[slot]
        return self.spent_usd + sum(self.held_usd.values())


class MemoryBudgetLedger:
    """Spend and holds per (scope, period key), in a dict."""

    def __init__(self, *, clock: Callable[[], float] = time.time, reservation_ttl_s: float = 900.0) -> None:
        self._clock = clock
        self._slot_s = reservation_ttl_s / RESERVATION_SLOTS
        self._accounts: dict[tuple[str, str], _Account] = {}
        self._swept_at_s = clock()

    async def reserve(self, caps: Sequence[BudgetCap], amount_usd: float) -> Reservation:
        now_s = self._clock()
        self._sweep(now_s)
        slot = int(now_s // self._slot_s)
        rows = [(cap, period_window(cap.period, now_s)) for cap in tightest_caps(caps)]
        accounts = [self._account(cap.scope, window.key, window.resets_at) for cap, window in rows]
        for (cap, window), account in zip(rows, accounts, strict=True):
            committed = account.committed_usd(slot - RESERVATION_SLOTS + 1)
            if over_limit(cap, committed, amount_usd):
                return refusal(cap, window, committed, amount_usd, now_s)
        for account in accounts:
            account.held_usd[slot] = account.held_usd.get(slot, 0.0) + amount_usd
        held = tuple(Hold(cap.scope, window.key, window.resets_at) for cap, window in rows)
        return Reservation(allowed=True, amount_usd=amount_usd, held=held, slot=slot)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        if not reservation.allowed:
            return
        for hold in reservation.held:
            account = self._accounts.get((hold.scope, hold.period_key))
            if account is None:  # its period ended long ago and was swept
                continue
            left = account.held_usd.get(reservation.slot)
            if left is not None:
                left -= reservation.amount_usd
                if abs(left) < EPSILON_USD:
                    del account.held_usd[reservation.slot]
                else:
                    account.held_usd[reservation.slot] = left
            account.spent_usd += actual_usd

    async def spent(self, scope: str, period: Period) -> float:
        account = self._accounts.get((scope, period_window(period, self._clock()).key))
        return 0.0 if account is None else account.spent_usd

    async def seed(self, scope: str, period: Period, spent_usd: float) -> None:
        window = period_window(period, self._clock())
        account = self._account(scope, window.key, window.resets_at)
        account.spent_usd = max(account.spent_usd, spent_usd)

    async def close(self) -> None:
        self._accounts.clear()

    def __len__(self) -> int:
        """Accounts held: tests check that finished periods are dropped."""
        return len(self._accounts)

    def _account(self, scope: str, key: str, resets_at: float | None) -> _Account:
        account = self._accounts.get((scope, key))
        if account is None:
            account = self._accounts[(scope, key)] = _Account(resets_at)
        return account

    def _sweep(self, now_s: float) -> None:
        if now_s - self._swept_at_s < 3600:
            return
        self._swept_at_s = now_s
        done = [
            k for k, a in self._accounts.items() if a.resets_at is not None and a.resets_at + GRACE_S < now_s
        ]
        for key in done:
            del self._accounts[key]
