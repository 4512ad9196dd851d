"""The behaviour both backends promise, run against the in-process one and a real redis-server.

Windows are a minute where the test only counts, and a fraction of a second where it waits for
refill (real sleeps, so the Redis scripts' own clock is exercised too).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

import pytest
from redis_server import RedisServer

from computenet.gateway.limits import (
    BudgetCap,
    BudgetLedger,
    Limit,
    MemoryBudgetLedger,
    MemoryRateLimiter,
    RateLimiter,
    RedisBudgetLedger,
    RedisRateLimiter,
)

MakeLimiter = Callable[[float], RateLimiter]


class FakeClock:
    """Wall-clock seconds the ledger reads for its periods; tests move it."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def unix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def duration_s(text: str) -> float:
    """Parse OpenAI's reset format ("20ms", "1.5s", "6m0s", "1h2m3s")."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s", text)
    assert match, text
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer.started() as server:
        yield server.url


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_limiter(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    made: list[RateLimiter] = []
    prefix = f"t{uuid.uuid4().hex[:8]}:"

    def make(window_s: float) -> RateLimiter:
        limiter: RateLimiter
        if backend == "memory":
            limiter = MemoryRateLimiter(window_s=window_s)
        else:
            limiter = RedisRateLimiter(request.getfixturevalue("redis_url"), window_s=window_s, prefix=prefix)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


class Ledger:
    """A ledger under test and its fake wall clock, which names the period."""

    def __init__(self, backend: str, ledger: BudgetLedger, clock: FakeClock) -> None:
        self.backend, self.ledger, self.clock = backend, ledger, clock

    async def age_reservations(self, seconds: float) -> None:
        self.clock.now_s += seconds
        if self.backend == "redis":  # reservation slots follow Redis's own clock
            await asyncio.sleep(seconds)


@pytest.fixture
async def ledger(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    clock = FakeClock(unix("2025-01-14T12:00:00"))
    made: BudgetLedger
    if backend == "memory":
        made = MemoryBudgetLedger(clock=clock, reservation_ttl_s=0.5)
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisBudgetLedger(url, clock=clock, reservation_ttl_s=0.5, prefix=f"t{uuid.uuid4().hex[:8]}:")
    yield Ledger(backend, made, clock)
    await made.close()


# --- rate limits ---------------------------------------------------------------------------------


async def test_requests_per_minute_refuses_the_request_after_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(60)
    limits = [Limit("key:a", requests_per_minute=3)]
    for remaining in ("2", "1", "0"):
        admitted = await limiter.admit(limits, 0)
        assert admitted.allowed and admitted.headers["x-ratelimit-remaining-requests"] == remaining
    refused = await limiter.admit(limits, 0)
    assert not refused.allowed and not refused.unavailable
    assert refused.limited_by == "key:a requests"
    assert 19.9 < refused.retry_after_s <= 20.0  # one request refills in 60 s / 3
    assert refused.headers["retry-after"] == "20"
    assert 19_900 < int(refused.headers["retry-after-ms"]) <= 20_000
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 59.9 < duration_s(refused.headers["x-ratelimit-reset-requests"]) <= 60.0


async def test_tokens_per_minute_refuses_when_the_estimate_does_not_fit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(60)
    limits = [Limit("key:a", tokens_per_minute=100)]
    for _ in range(3):
        assert (await limiter.admit(limits, 30)).allowed
    refused = await limiter.admit(limits, 30)  # 10 left, 30 needed: 20 tokens at 100/60 per second
    assert not refused.allowed and refused.limited_by == "key:a tokens"
    assert 11.9 < refused.retry_after_s <= 12.0
    assert refused.headers["x-ratelimit-remaining-tokens"] == "10"
    assert (await limiter.admit(limits, 10)).allowed  # a smaller request still fits


async def test_a_refusal_consumes_nothing_in_any_scope(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(60)
    tenant = Limit("tenant:acme", requests_per_minute=10, tokens_per_minute=1000)
    key = Limit("key:a", requests_per_minute=1)
    assert (await limiter.admit([tenant, key], 100)).allowed
    for _ in range(3):  # the tenant is named first: a partial charge would show there
        refused = await limiter.admit([tenant, key], 100)
        assert not refused.allowed and refused.limited_by == "key:a requests"
    tenant_only = await limiter.admit([tenant], 100)
    assert tenant_only.headers["x-ratelimit-remaining-requests"] == "8"
    assert tenant_only.headers["x-ratelimit-remaining-tokens"] == "800"


async def test_the_refusing_scope_is_the_one_that_makes_the_client_wait_longest(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(60)
    model, tenant = Limit("model:m", requests_per_minute=3), Limit("tenant:t", requests_per_minute=2)
    assert (await limiter.admit([model], 0)).allowed
    for _ in range(2):
        assert (await limiter.admit([model, tenant], 0)).allowed
    for order in ([model, tenant], [tenant, model]):  # both empty: the model refills in 20 s, the tenant 30 s
        refused = await limiter.admit(order, 0)
        assert refused.limited_by == "tenant:t requests" and 29.9 < refused.retry_after_s <= 30


async def test_headers_come_from_the_tightest_scope_of_each_dimension(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(60)
    key = Limit("key:a", requests_per_minute=5, tokens_per_minute=10_000)
    tenant = Limit("tenant:t", requests_per_minute=100, tokens_per_minute=500)
    admitted = await limiter.admit([tenant, key], 100)
    assert admitted.headers["x-ratelimit-limit-requests"] == "5"
    assert admitted.headers["x-ratelimit-remaining-requests"] == "4"
    assert 11.9 < duration_s(admitted.headers["x-ratelimit-reset-requests"]) <= 12.0
    assert admitted.headers["x-ratelimit-limit-tokens"] == "500"
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "400"
    assert 11.9 < duration_s(admitted.headers["x-ratelimit-reset-tokens"]) <= 12.0
    assert "retry-after" not in admitted.headers


async def test_no_limits_admit_everything_without_headers(make_limiter: MakeLimiter) -> None:
    admitted = await make_limiter(60).admit([], 10**9)
    assert admitted.allowed and admitted.headers == {}


async def test_settle_gives_back_unused_tokens(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(60)
    limits = [Limit("key:a", tokens_per_minute=100)]
    admitted = await limiter.admit(limits, 50)
    await limiter.settle(admitted, 10)
    after = await limiter.admit(limits, 0)
    assert after.headers["x-ratelimit-remaining-tokens"] == "90"


async def test_settle_above_the_estimate_goes_into_debt_and_delays_the_next(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(60)
    limits = [Limit("key:a", tokens_per_minute=100)]
    admitted = await limiter.admit(limits, 10)
    await limiter.settle(admitted, 150)  # level 100 - 150 = -50
    refused = await limiter.admit(limits, 10)
    assert not refused.allowed and refused.limited_by == "key:a tokens"
    assert 35.9 < refused.retry_after_s <= 36.0  # 60 tokens short at 100/60 per second
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_settling_a_refusal_changes_nothing(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(60)
    limits = [Limit("key:a", requests_per_minute=1, tokens_per_minute=100)]
    assert (await limiter.admit(limits, 40)).allowed
    refused = await limiter.admit(limits, 40)
    await limiter.settle(refused, 0)
    tokens_only = await limiter.admit([Limit("key:a", tokens_per_minute=100)], 0)
    assert tokens_only.headers["x-ratelimit-remaining-tokens"] == "60"


async def test_a_request_larger_than_the_bucket_passes_when_full_and_leaves_debt(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(60)
    limits = [Limit("key:a", tokens_per_minute=100)]
    assert (await limiter.admit(limits, 250)).allowed  # refusing it would refuse it forever
    refused = await limiter.admit(limits, 1)
    assert not refused.allowed and 90.5 < refused.retry_after_s <= 90.6  # 151 tokens short


async def test_buckets_refill_continuously_over_the_window(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(0.5)  # 5 requests per 0.5 s: one every 100 ms
    limits = [Limit("key:a", requests_per_minute=5)]
    for _ in range(5):
        assert (await limiter.admit(limits, 0)).allowed
    refused = await limiter.admit(limits, 0)
    assert not refused.allowed and 0.05 < refused.retry_after_s <= 0.1  # less if the loop was slow
    await asyncio.sleep(refused.retry_after_s + 0.01)
    assert (await limiter.admit(limits, 0)).allowed
    assert not (await limiter.admit(limits, 0)).allowed


# --- budgets -------------------------------------------------------------------------------------


async def test_reserve_refuses_what_would_overshoot_and_says_which_cap(ledger: Ledger) -> None:
    caps = [BudgetCap("tenant:acme", 5.0, "month"), BudgetCap("key:a", 1.0, "day")]
    held = await ledger.ledger.reserve(caps, 0.6)
    assert held.allowed and held.amount_usd == 0.6
    refused = await ledger.ledger.reserve(caps, 0.6)  # nothing settled yet: the hold counts
    assert not refused.allowed and not refused.unavailable
    assert refused.limited_by == "key:a day"
    assert refused.spent_usd == pytest.approx(0.6) and refused.limit_usd == 1.0
    assert refused.resets_at == unix("2025-01-15T00:00:00")
    assert refused.retry_after_s == pytest.approx(12 * 3600)
    assert "key:a day" in refused.message and "2025-01-15T00:00:00Z" in refused.message
    assert (await ledger.ledger.reserve(caps, 0.4)).allowed  # exactly up to the cap


async def test_a_refused_reservation_holds_nothing_under_the_other_caps(ledger: Ledger) -> None:
    tenant, key = BudgetCap("tenant:acme", 1.0, "month"), BudgetCap("key:a", 0.5, "day")
    for _ in range(3):
        assert not (await ledger.ledger.reserve([tenant, key], 0.6)).allowed
    assert (await ledger.ledger.reserve([tenant], 1.0)).allowed


async def test_settle_replaces_the_hold_by_the_actual_cost(ledger: Ledger) -> None:
    cap = [BudgetCap("key:a", 1.0, "day")]
    held = await ledger.ledger.reserve(cap, 0.5)
    await ledger.ledger.settle(held, 0.2)
    assert await ledger.ledger.spent("key:a", "day") == pytest.approx(0.2)
    assert (await ledger.ledger.reserve(cap, 0.8)).allowed
    refused = await ledger.ledger.reserve(cap, 0.01)
    assert not refused.allowed and refused.spent_usd == pytest.approx(1.0)


async def test_periods_roll_over_at_utc_midnight_and_month_end(ledger: Ledger) -> None:
    ledger.clock.now_s = unix("2025-01-31T23:59:59")
    day, month = BudgetCap("key:a", 1.0, "day"), BudgetCap("tenant:t", 1.5, "month")
    total = BudgetCap("key:b", 1.0, "total")
    await ledger.ledger.settle(await ledger.ledger.reserve([day, month, total], 1.0), 1.0)
    refused = await ledger.ledger.reserve([day], 0.1)
    assert refused.resets_at == unix("2025-02-01T00:00:00")
    assert (await ledger.ledger.reserve([month], 0.6)).resets_at == unix("2025-02-01T00:00:00")
    total_refused = await ledger.ledger.reserve([total], 0.1)
    assert not total_refused.allowed and total_refused.resets_at is None
    assert "never resets" in total_refused.message
    ledger.clock.now_s += 2  # 2025-02-01T00:00:01: a new day and a new month; "total" goes on
    assert await ledger.ledger.spent("key:a", "day") == 0.0
    assert await ledger.ledger.spent("tenant:t", "month") == 0.0
    assert await ledger.ledger.spent("key:b", "total") == 1.0
    assert (await ledger.ledger.reserve([day, month], 1.0)).allowed
    assert not (await ledger.ledger.reserve([total], 0.1)).allowed


async def test_seed_restores_the_spend_of_the_current_period_and_never_lowers_it(ledger: Ledger) -> None:
    await ledger.ledger.seed("tenant:t", "month", 0.7)
    assert await ledger.ledger.spent("tenant:t", "month") == pytest.approx(0.7)
    assert not (await ledger.ledger.reserve([BudgetCap("tenant:t", 1.0, "month")], 0.4)).allowed
    await ledger.ledger.seed("tenant:t", "month", 0.1)
    assert await ledger.ledger.spent("tenant:t", "month") == pytest.approx(0.7)
    assert await ledger.ledger.spent("tenant:t", "day") == 0.0


async def test_holds_that_are_never_settled_expire_after_the_reservation_ttl(ledger: Ledger) -> None:
    cap = [BudgetCap("key:a", 1.0, "day")]
    assert (await ledger.ledger.reserve(cap, 1.0)).allowed  # its gateway "crashes": no settle
    assert not (await ledger.ledger.reserve(cap, 1.0)).allowed
    await ledger.age_reservations(0.55)  # reservation TTL 0.5 s
    late = await ledger.ledger.reserve(cap, 1.0)
    assert late.allowed
    await ledger.ledger.settle(late, 0.3)
    assert await ledger.ledger.spent("key:a", "day") == pytest.approx(0.3)


async def test_no_caps_reserve_nothing(ledger: Ledger) -> None:
    reservation = await ledger.ledger.reserve([], 100.0)
    assert reservation.allowed
    await ledger.ledger.settle(reservation, 100.0)
