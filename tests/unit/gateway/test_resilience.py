"""Circuit breakers and backoff, on an injected clock: when a failing backend is skipped,
when it is probed again, and how long an upstream's Retry-After keeps it out."""

from __future__ import annotations

from computenet.gateway.resilience import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    backoff_delay,
    parse_retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(**kw: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerSettings(**kw), clock), clock  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_then_probes_once_and_closes_on_success() -> None:
    b, clock = breaker(consecutive_failures=3, open_s=5)
    for _ in range(2):
        b.failure()
    assert b.allows() and b.state is BreakerState.CLOSED
    b.failure()
    assert b.state is BreakerState.OPEN and not b.allows()
    clock.now += 5
    assert b.allows() and b.state is BreakerState.HALF_OPEN
    assert not b.allows()  # one probe at a time
    b.success()
    assert b.state is BreakerState.CLOSED and b.allows()


def test_a_failed_probe_doubles_the_wait_up_to_the_cap() -> None:
    b, clock = breaker(consecutive_failures=1, open_s=5, max_open_s=12)
    b.failure()
    waits = []
    for _ in range(3):
        start = clock.now
        while not b.allows():
            clock.now += 1
        waits.append(clock.now - start)
        b.failure()  # the probe fails
    assert waits == [5, 10, 12]


def test_error_rate_opens_it_even_without_a_streak() -> None:
    b, _ = breaker(consecutive_failures=100, error_rate=0.5, min_calls=10)
    for i in range(12):
        if i % 3 == 2:
            b.success()
        else:
            b.failure()
    assert b.state is BreakerState.OPEN


def test_retry_after_opens_it_for_exactly_that_long() -> None:
    b, clock = breaker(consecutive_failures=5)
    b.failure(retry_after_s=30)
    clock.now += 29.9
    assert not b.allows()
    clock.now += 0.2
    assert b.allows()


def test_a_probe_that_ended_without_a_verdict_frees_the_slot() -> None:
    b, clock = breaker(consecutive_failures=1, open_s=1)
    b.failure()
    clock.now += 1
    assert b.allows() and not b.allows()
    b.release_probe()  # the client went away mid-probe
    assert b.allows()


def test_backoff_is_jittered_and_bounded() -> None:
    delays = [backoff_delay(n, base_s=0.025, cap_s=1.0) for n in range(1, 12) for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(backoff_delay(1) for _ in range(200)) <= 0.025
    assert len({round(d, 6) for d in delays}) > 100  # jittered, not a fixed schedule


def test_retry_after_header_values() -> None:
    assert parse_retry_after(b"7") == 7.0
    assert parse_retry_after(b"0.5") == 0.5
    assert parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


async def test_breakers_of_withdrawn_replicas_are_forgotten() -> None:
    from computenet.api import Endpoint
    from computenet.gateway import Gateway

    gw = Gateway()
    await gw.registry.publish(
        "d", [Endpoint("d-0", "d", "m", "http://127.0.0.1:9")], model="m", policy="round_robin"
    )
    gw.breakers.get("d-0").failure()
    assert "d-0" in gw.breakers.states()
    await gw.registry.publish(
        "d", [Endpoint("d-1", "d", "m", "http://127.0.0.1:9")], model="m", policy="round_robin"
    )
    assert "d-0" not in gw.breakers.states()
