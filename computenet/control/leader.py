"""Leader election, the decisions: who may take a lease, and how long a leader may act on one.

Pure functions of a lease as read from the database and the times involved, so every
rule is tested without a database. `election.py` reads and writes the lease and applies
these decisions.

The rules are Kubernetes' (client-go's leaderelection):

* a lease nobody holds, or whose holder did not renew it within `lease_duration_s` by
  the database's clock, may be taken by anyone; the holder renews it every
  `retry_period_s`; a follower tries as often;
* a leader acts only while its last successful renewal is younger than
  `renew_deadline_s`, measured on its own monotonic clock from the moment it *sent*
  that renewal. The database stamped the renewal later than that moment, so the
  leader's deadline falls at least `lease_duration_s - renew_deadline_s` before any
  follower may take the lease: a leader cut off from the database stops reconciling
  before another can start (fencing by time). The gap absorbs clock-rate drift and the
  time it takes to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from computenet.store import Lease


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """Kubernetes' three knobs. The defaults bound a failover after a leader dies to
    lease_duration_s + retry_period_s (9.5 s), and leave 3 s between a cut-off leader
    stopping and any follower starting."""

    lease_duration_s: float = 8.0
    renew_deadline_s: float = 5.0
    retry_period_s: float = 1.5

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period_s:g}s < {self.renew_deadline_s:g}s < {self.lease_duration_s:g}s; "
                "e.g. --leader-elect-retry-period 1.5 --leader-elect-renew-deadline 5 "
                "--leader-elect-lease-duration 8"
            )


class Move(StrEnum):
    CREATE = "create"  # nobody ever held it: insert it
    TAKE = "take"  # free or expired: take it over
    RENEW = "renew"  # ours: renew it
    FOLLOW = "follow"  # someone else holds it and it has not expired


def next_move(lease: Lease | None, me: str, db_now: float) -> Move:
    """What `me` should do about a lease read at `db_now` (the database's clock)."""
    if lease is None:
        return Move.CREATE
    if lease.holder == me:
        return Move.RENEW
    if not lease.holder or db_now >= lease.expires_at:
        return Move.TAKE
    return Move.FOLLOW


def leads_until(renewal_sent_at: float, timings: LeaseTimings) -> float:
    """The monotonic time up to which a renewal sent at `renewal_sent_at` lets its sender act."""
    return renewal_sent_at + timings.renew_deadline_s


def attempt_timeout(now: float, lead_deadline: float | None, timings: LeaseTimings) -> float:
    """How long one read-and-write of the lease may take: a retry period, and for a leader no
    longer than what is left of its term, so that a hung database cannot keep it acting."""
    if lead_deadline is None:
        return timings.retry_period_s
    return max(0.0, min(timings.retry_period_s, lead_deadline - now))
