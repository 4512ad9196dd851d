"""The in-process backends with an injected clock (exact arithmetic, no sleeps), and the pure helpers."""

from __future__ import annotations

import pytest

from computenet.gateway.limits import (
    BudgetCap,
    Limit,
    MemoryBudgetLedger,
    MemoryRateLimiter,
    format_duration,
)


class FakeClock:
    def __init__(self, now_s: float = 1_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (12.3456, "12.346s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (-3, "0s"),
    ],
)
def test_durations_are_written_the_way_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_limits_and_caps_reject_values_that_cannot_mean_anything() -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        Limit("key:a", requests_per_minute=0)
    with pytest.raises(ValueError, match="period"):
        BudgetCap("key:a", 1.0, "week")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit_usd"):
        BudgetCap("key:a", -1.0)


async def test_refill_is_continuous_and_capped_at_the_limit() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    limits = [Limit("key:a", tokens_per_minute=600)]  # 10 tokens per second
    assert (await limiter.admit(limits, 600)).allowed
    refused = await limiter.admit(limits, 50)
    assert refused.retry_after_s == pytest.approx(5.0)
    clock.now_s += 4.9
    assert not (await limiter.admit(limits, 50)).allowed
    clock.now_s += 0.1
    assert (await limiter.admit(limits, 50)).allowed
    clock.now_s += 3600  # an hour idle refills one minute's worth, no more
    burst = await limiter.admit(limits, 600)
    assert burst.allowed and burst.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_settle_after_refill_keeps_the_bucket_under_its_capacity() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    limits = [Limit("key:a", tokens_per_minute=600)]
    admitted = await limiter.admit(limits, 300)
    clock.now_s += 60
    await limiter.settle(admitted, 0)  # giving back 300 to a full bucket leaves it full
    assert (await limiter.admit(limits, 600)).allowed
    assert not (await limiter.admit(limits, 1)).allowed


async def test_a_scope_named_twice_is_charged_once_at_its_tighter_limit() -> None:
    limiter = MemoryRateLimiter(clock=FakeClock())
    limits = [Limit("key:a", requests_per_minute=10), Limit("key:a", requests_per_minute=2)]
    assert (await limiter.admit(limits, 0)).headers["x-ratelimit-remaining-requests"] == "1"
    assert (await limiter.admit(limits, 0)).allowed
    assert not (await limiter.admit(limits, 0)).allowed


async def test_buckets_that_refilled_are_dropped_so_memory_stays_bounded() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    for n in range(1000):
        assert (await limiter.admit([Limit(f"key:{n}", requests_per_minute=5)], 0)).allowed
    assert len(limiter) == 1000
    clock.now_s += 30  # not yet full: kept
    await limiter.admit([], 0)
    assert len(limiter) == 1000
    clock.now_s += 31
    await limiter.admit([Limit("key:new", requests_per_minute=5)], 0)
    assert len(limiter) == 1


async def test_a_settle_in_the_next_period_lands_in_the_period_it_was_reserved_in() -> None:
    clock = FakeClock(1_736_899_199.0)  # 2025-01-14T23:59:59Z
    ledger = MemoryBudgetLedger(clock=clock)
    held = await ledger.reserve([BudgetCap("key:a", 1.0, "day")], 0.5)
    clock.now_s += 2
    await ledger.settle(held, 0.4)
    assert await ledger.spent("key:a", "day") == 0.0
    clock.now_s -= 2
    assert await ledger.spent("key:a", "day") == pytest.approx(0.4)


async def test_accounts_of_finished_periods_are_dropped() -> None:
    clock = FakeClock(1_736_899_199.0)
    ledger = MemoryBudgetLedger(clock=clock)
    for n in range(100):
        await ledger.reserve([BudgetCap(f"key:{n}", 1.0, "day"), BudgetCap("all", 9.0, "total")], 0.01)
    assert len(ledger) == 101
    clock.now_s += 3 * 86_400  # past the end of that day and its grace
    await ledger.reserve([BudgetCap("key:new", 1.0, "day")], 0.01)
    assert len(ledger) == 2  # "total" accounts never end


async def test_many_small_holds_fill_a_cap_exactly() -> None:
    ledger = MemoryBudgetLedger(clock=FakeClock())
    cap = [BudgetCap("key:a", 5.0, "total")]
    granted = [await ledger.reserve(cap, 0.01) for _ in range(600)]
    assert sum(r.allowed for r in granted) == 500
    for reservation in granted:
        await ledger.settle(reservation, reservation.amount_usd)
    assert await ledger.spent("key:a", "total") == pytest.approx(5.0)
