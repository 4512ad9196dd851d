"""Two gateway replicas, as two processes with their own event loop and connection, share one Redis.

Each process hammers the same scope with concurrent calls for a bounded time. What they were
granted together must match what one bucket allows: its capacity plus the refill over the time
that passed by Redis's clock (within 2%); concurrent budget reservations must fill a cap exactly.
This module is also the worker: `python -m unit.gateway.test_limits_replicas <json>` run from tests/.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis_server import RedisServer

from computenet.gateway.limits import BudgetCap, Limit, RedisBudgetLedger, RedisRateLimiter

TESTS_DIR = Path(__file__).resolve().parents[2]
CONCURRENCY = 8  # calls in flight per process


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer.started() as server:
        yield server.url


async def redis_time_s(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return seconds + micros / 1e6


async def run_replicas(job: dict[str, Any]) -> tuple[float, list[dict[str, Any]]]:
    """Start two worker processes, let them go at the same moment, and collect what each did.

    Returns Redis's time just before the go, and each worker's counts and Redis time at its end.
    """
    redis = Redis.from_url(job["url"])
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "unit.gateway.test_limits_replicas",
            json.dumps(job),
            cwd=TESTS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:  # each has imported everything and connected
            assert proc.stdout and await asyncio.wait_for(proc.stdout.readline(), 15) == b"ready\n"
        go_s = await redis_time_s(redis)
        for proc in procs:
            assert proc.stdin
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = [await asyncio.wait_for(proc.communicate(), 15) for proc in procs]
    finally:
        await redis.aclose()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert all(proc.returncode == 0 for proc in procs)
    return go_s, [json.loads(out) for out, _ in outputs]


async def test_two_replicas_together_stay_within_2_percent_of_the_limit(redis_url: str) -> None:
    # Both dimensions at once (separate scopes), to start the worker processes only once.
    # Each allows 500 calls per 2 s window: 500 requests, or 50,000 tokens at 100 per call.
    window_s, tag = 2.0, uuid.uuid4().hex[:8]
    scopes = {
        "requests": {"scope": f"key:{tag}", "limit": {"requests_per_minute": 500}},
        "tokens": {"scope": f"tenant:{tag}", "limit": {"tokens_per_minute": 50_000}},
    }
    job = {"kind": "rate", "url": redis_url, "window_s": window_s, "scopes": scopes, "tokens": 100}
    _, results = await run_replicas(job | {"duration_s": 2.0})
    # From the first worker's start (no grant can come earlier) to the last one's end, by Redis TIME.
    elapsed_s = max(r["ended_s"] for r in results) - min(r["started_s"] for r in results)
    allowed = 500 + 500 / window_s * elapsed_s  # a full bucket, then its refill
    for dimension in scopes:
        counts = [r[dimension] for r in results]
        assert all(c["granted"] > 0 and c["refused"] > 0 for c in counts), counts  # both contended
        granted = sum(c["granted"] for c in counts)
        assert abs(granted - allowed) <= 0.02 * allowed, (dimension, granted, allowed, counts)


async def test_two_replicas_reserving_at_once_fill_a_budget_exactly(redis_url: str) -> None:
    scope = f"tenant:{uuid.uuid4().hex[:8]}"
    job = {"kind": "budget", "url": redis_url, "scope": scope, "limit_usd": 20.0, "amount_usd": 0.01}
    _, results = await run_replicas(job)
    assert all(r["granted"] > 0 for r in results), results
    assert sum(r["granted"] for r in results) == 2000  # never one more, never one short
    ledger = RedisBudgetLedger(redis_url)
    try:
        assert await ledger.spent(scope, "month") == pytest.approx(20.0)
    finally:
        await ledger.close()


# --- the worker ----------------------------------------------------------------------------------


async def _hammer_rate(job: dict[str, Any], redis: Redis) -> dict[str, Any]:
    limiter = RedisRateLimiter(job["url"], window_s=job["window_s"], socket_timeout_s=2)
    counts = {dimension: {"granted": 0, "refused": 0} for dimension in job["scopes"]}

    async def one(dimension: str, deadline_s: float) -> None:
        limits = [Limit(job["scopes"][dimension]["scope"], **job["scopes"][dimension]["limit"])]
        while time.monotonic() < deadline_s:
            admission = await limiter.admit(limits, job["tokens"])
            assert not admission.unavailable
            counts[dimension]["granted" if admission.allowed else "refused"] += 1

    try:  # connect and load the script on another scope, so the first call after "go" is a plain one
        warm_up = [Limit("warm-up", 10**6)]
        await asyncio.gather(*(limiter.admit(warm_up, 0) for _ in range(CONCURRENCY * len(counts))))
        await _ready()
        started_s = await redis_time_s(redis)
        deadline_s = time.monotonic() + job["duration_s"]
        await asyncio.gather(*(one(dim, deadline_s) for dim in counts for _ in range(CONCURRENCY)))
        return {**counts, "started_s": started_s, "ended_s": await redis_time_s(redis)}
    finally:
        await limiter.close()


async def _hammer_budget(job: dict[str, Any], redis: Redis) -> dict[str, Any]:
    ledger = RedisBudgetLedger(job["url"], socket_timeout_s=2)
    caps = [BudgetCap(job["scope"], job["limit_usd"], "month")]
    counts = {"granted": 0, "refused": 0}

    async def one() -> None:  # reserve, "send", settle at the reserved cost; stop at the first refusal
        while (reservation := await ledger.reserve(caps, job["amount_usd"])).allowed:
            assert not reservation.unavailable
            counts["granted"] += 1
            await asyncio.sleep(0)
            await ledger.settle(reservation, reservation.amount_usd)
        counts["refused"] += 1

    try:
        await ledger.spent(job["scope"], "month")  # connected before "go"
        await _ready()
        await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        return counts
    finally:
        await ledger.close()


async def _ready() -> None:
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def _worker(job: dict[str, Any]) -> None:
    redis = Redis.from_url(job["url"])
    try:
        hammer = _hammer_rate if job["kind"] == "rate" else _hammer_budget
        print(json.dumps(await hammer(job, redis)), flush=True)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(_worker(json.loads(sys.argv[1])))
