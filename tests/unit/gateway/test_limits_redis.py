"""What only the Redis backends do: their keys and TTLs, the script cache, and Redis going away.

Every test here gets its own redis-server: several stop it and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Literal

import pytest
from redis.asyncio import Redis
from redis_server import RedisServer, redis_server_binary

from computenet.gateway.limits import (
    BudgetCap,
    Limit,
    LimitsUnavailableError,
    RedisBudgetLedger,
    RedisRateLimiter,
)

NOON = datetime(2025, 1, 14, 12, tzinfo=UTC).timestamp()
LIMITS = [Limit("key:a", requests_per_minute=10, tokens_per_minute=1000)]
CAPS = [BudgetCap("key:a", 1.0, "day"), BudgetCap("tenant:t", 10.0, "month"), BudgetCap("org", 99.0, "total")]
LINK_LOGGER = "computenet.gateway.limits.redis_link"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as started:
        yield started


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(server.url, decode_responses=True)
    yield redis
    await redis.aclose()


async def test_buckets_are_namespaced_and_expire_once_they_would_be_full(
    server: RedisServer, client: Redis
) -> None:
    limiter = RedisRateLimiter(server.url, window_s=0.2, prefix="app1:")
    default = RedisRateLimiter(server.url, window_s=0.2)
    try:
        await limiter.admit(LIMITS, 100)
        await default.admit([Limit("key:b", requests_per_minute=1)], 0)
        assert set(await client.keys("*")) == {
            "app1:rl:key:a:requests",
            "app1:rl:key:a:tokens",
            "computenet:rl:key:b:requests",
        }
        # 1 of 10 requests refills in 20 ms, 100 of 1000 tokens in 20 ms; then 1 s of slack.
        assert 500 < await client.pttl("app1:rl:key:a:requests") <= 1020
        assert 500 < await client.pttl("computenet:rl:key:b:requests") <= 1200
    finally:
        await limiter.close()
        await default.close()


async def test_replicas_with_one_prefix_share_buckets_and_other_prefixes_do_not(server: RedisServer) -> None:
    first, second = RedisRateLimiter(server.url, prefix="a:"), RedisRateLimiter(server.url, prefix="a:")
    other = RedisRateLimiter(server.url, prefix="b:")
    limits = [Limit("key:a", requests_per_minute=2)]
    try:
        assert (await first.admit(limits, 0)).allowed
        assert (await second.admit(limits, 0)).allowed
        assert not (await first.admit(limits, 0)).allowed
        assert (await other.admit(limits, 0)).allowed
    finally:
        for limiter in (first, second, other):
            await limiter.close()


async def test_budget_accounts_live_until_their_period_ends_plus_a_grace(
    server: RedisServer, client: Redis
) -> None:
    ledger = RedisBudgetLedger(server.url, prefix="app1:", clock=lambda: NOON)
    try:
        held = await ledger.reserve(CAPS, 0.25)
        day, month, total = (f"app1:budget:{hold.scope}:{hold.period_key}" for hold in held.held)
        assert (day, month, total) == (
            "app1:budget:key:a:day:2025-01-14",
            "app1:budget:tenant:t:month:2025-01",
            "app1:budget:org:total",
        )
        assert await client.hgetall(day) == {f"h:{held.slot}": "0.25"}
        assert (12 + 48) * 3600 - 2 < await client.ttl(day) <= (12 + 48) * 3600
        assert (17 * 24 + 12 + 48) * 3600 - 2 < await client.ttl(month) <= (17 * 24 + 12 + 48) * 3600
        assert await client.ttl(total) == -1  # a lifetime budget must not reset while gateways run
        await ledger.settle(held, 0.125)
        assert await client.hgetall(day) == {"spent": "0.125"}  # the hold is gone, not left at 0
    finally:
        await ledger.close()


async def test_scripts_are_sent_again_when_redis_forgot_them(server: RedisServer, client: Redis) -> None:
    limiter = RedisRateLimiter(server.url)
    ledger = RedisBudgetLedger(server.url)
    try:
        assert (await limiter.admit(LIMITS, 1)).allowed
        await client.script_flush()
        admitted = await limiter.admit(LIMITS, 1)  # NOSCRIPT, then the script in full
        assert admitted.allowed and admitted.headers["x-ratelimit-remaining-requests"] == "8"
        await ledger.settle(await ledger.reserve(CAPS, 0.5), 0.5)
        assert await ledger.spent("key:a", "day") == 0.5
        # Cached again: rate admit, budget reserve, settle and spent; later calls send only the SHA.
        assert (await client.info("memory"))["number_of_cached_scripts"] == 4
    finally:
        await limiter.close()
        await ledger.close()


async def test_a_redis_restart_costs_no_request(server: RedisServer) -> None:
    limiter = RedisRateLimiter(server.url, failure_mode="closed", reconnect_interval_s=0)
    try:
        assert (await limiter.admit(LIMITS, 1)).allowed
        server.stop()
        server.start()  # the pooled connection is dead; the one retry replaces it
        assert (await limiter.admit(LIMITS, 1)).allowed
    finally:
        await limiter.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_down_answers_by_the_failure_mode_and_recovers(
    server: RedisServer, mode: Literal["open", "closed"]
) -> None:
    limiter = RedisRateLimiter(server.url, failure_mode=mode, reconnect_interval_s=0.05)
    ledger = RedisBudgetLedger(server.url, failure_mode=mode, reconnect_interval_s=0.05)
    try:
        before = await limiter.admit(LIMITS, 10)
        assert before.allowed and not before.unavailable
        server.stop()

        down = await limiter.admit(LIMITS, 10)
        assert down.unavailable
        if mode == "open":
            assert down.allowed and down.headers == {}
        else:
            assert not down.allowed and down.limited_by == "limiter unavailable"
            assert down.retry_after_s == 1.0 and down.headers["retry-after"] == "1"
        await limiter.settle(before, 500)  # logged, not raised
        await limiter.settle(down, 500)

        held = await ledger.reserve(CAPS, 0.5)
        assert held.unavailable and held.allowed == (mode == "open")
        if mode == "closed":
            assert held.limited_by == "budget ledger unavailable" and "unavailable" in held.message
        await ledger.settle(held, 0.5)
        with pytest.raises(LimitsUnavailableError):
            await ledger.spent("key:a", "day")
        with pytest.raises(LimitsUnavailableError):
            await ledger.seed("key:a", "day", 0.5)

        server.start()  # same port, empty
        await asyncio.sleep(0.06)
        after = await limiter.admit(LIMITS, 10)
        assert after.allowed and not after.unavailable
        assert after.headers["x-ratelimit-remaining-requests"] == "9"
        if mode == "open":  # the cost of a request admitted blind still counts once Redis is back
            await ledger.settle(held, 0.3)
            assert await ledger.spent("key:a", "day") == pytest.approx(0.3)
        again = await ledger.reserve(CAPS, 0.5)
        assert again.allowed and not again.unavailable
    finally:
        await limiter.close()
        await ledger.close()


async def test_a_redis_that_does_not_answer_costs_one_timeout_then_nothing_until_retry() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        limiter = RedisRateLimiter(url, failure_mode="closed", socket_timeout_s=0.1, reconnect_interval_s=5)
        try:
            started = time.monotonic()
            first = await limiter.admit(LIMITS, 1)
            took_s = time.monotonic() - started
            assert not first.allowed and first.unavailable and 0.09 < took_s < 1.0
            started = time.monotonic()
            second = await limiter.admit(LIMITS, 1)
            assert second.unavailable and time.monotonic() - started < 0.05
        finally:
            await limiter.close()


async def test_an_outage_logs_one_warning_and_its_end_one_more(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisRateLimiter(server.url, reconnect_interval_s=0)
    try:
        server.stop()
        with caplog.at_level(logging.WARNING, logger=LINK_LOGGER):
            for _ in range(5):
                assert (await limiter.admit(LIMITS, 1)).unavailable
            assert [r.getMessage().split(":")[0] for r in caplog.records] == ["rate limiter"]
            assert "Redis script rate_admit failed" in caplog.records[0].getMessage()
            server.start()
            for _ in range(3):
                assert not (await limiter.admit(LIMITS, 1)).unavailable
            assert caplog.records[-1].getMessage() == "rate limiter: Redis answers again"
            assert len(caplog.records) == 2
    finally:
        await limiter.close()


def test_a_missing_redis_server_skips_the_test_but_fails_it_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        redis_server_binary(["no-such-redis-server"])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run them"):
        redis_server_binary(["no-such-redis-server"])
