"""Leader election's pure decisions: who may take a lease, and how long a leader may act."""

from __future__ import annotations

import pytest

from computenet.control.leader import LeaseTimings, Move, attempt_timeout, leads_until, next_move
from computenet.store import Lease


def _lease(holder: str, renewed_at: float, duration_s: float = 10.0) -> Lease:
    return Lease(
        "l", holder, acquired_at=0.0, renewed_at=renewed_at, duration_s=duration_s, transitions=0, version=3
    )


def test_a_lease_nobody_ever_took_is_created() -> None:
    assert next_move(None, "me", db_now=100.0) is Move.CREATE


def test_the_holder_renews_even_past_expiry_while_nobody_took_it() -> None:
    assert next_move(_lease("me", renewed_at=100.0), "me", db_now=105.0) is Move.RENEW
    assert next_move(_lease("me", renewed_at=100.0), "me", db_now=150.0) is Move.RENEW


def test_a_live_lease_of_another_is_followed_until_it_expires() -> None:
    lease = _lease("other", renewed_at=100.0, duration_s=10.0)
    assert next_move(lease, "me", db_now=100.0) is Move.FOLLOW
    assert next_move(lease, "me", db_now=109.9) is Move.FOLLOW
    assert next_move(lease, "me", db_now=110.0) is Move.TAKE


def test_a_released_lease_is_taken_at_once() -> None:
    assert next_move(_lease("", renewed_at=0.0), "me", db_now=1.0) is Move.TAKE


def test_a_leader_stops_acting_before_any_follower_may_take_over() -> None:
    timings = LeaseTimings(lease_duration_s=8.0, renew_deadline_s=5.0, retry_period_s=1.5)
    sent = 1000.0  # the leader's monotonic clock when it sent its last successful renewal
    assert leads_until(sent, timings) == 1005.0
    # The database stamped that renewal no earlier than it was sent, so followers wait at least
    # until sent + lease_duration: 3 s after the leader stopped.
    assert leads_until(sent, timings) + 3.0 <= sent + timings.lease_duration_s


def test_a_leaders_attempt_never_outlasts_its_term() -> None:
    timings = LeaseTimings(lease_duration_s=8.0, renew_deadline_s=5.0, retry_period_s=1.5)
    assert attempt_timeout(now=10.0, lead_deadline=None, timings=timings) == 1.5  # a follower
    assert attempt_timeout(now=10.0, lead_deadline=20.0, timings=timings) == 1.5
    assert attempt_timeout(now=10.0, lead_deadline=10.4, timings=timings) == pytest.approx(0.4)
    assert attempt_timeout(now=10.0, lead_deadline=9.0, timings=timings) == 0.0


@pytest.mark.parametrize(("duration", "deadline", "retry"), [(8, 8, 1), (8, 5, 5), (8, 9, 1), (8, 5, 0)])
def test_timings_out_of_order_are_refused_with_the_flags_to_fix(
    duration: float, deadline: float, retry: float
) -> None:
    with pytest.raises(ValueError, match=r"retry period < renew deadline < lease duration.*--leader-elect"):
        LeaseTimings(duration, deadline, retry)
