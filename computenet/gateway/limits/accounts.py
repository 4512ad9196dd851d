"""Budget accounts: one per scope and period, shared arithmetic of both ledgers.

Periods are UTC calendar days and months, and "total", which never resets.

Every gateway replica names the current period from its own clock; replicas agree unless their
clocks straddle midnight, which moves at most the requests of a few milliseconds to a neighbouring
period. A budget account is keyed by scope and period key, so a new period is simply a new account.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .base import BudgetCap, Period, Reservation

# Accounts of a finished period are kept this long (Redis TTL, memory sweep) so late settles land.
GRACE_S = 2 * 86_400.0
# A reservation whose request never settled (the gateway crashed) is dropped after 9-10 tenths of
# the reservation TTL: holds are summed per slot of TTL/10 seconds and whole slots expire.
RESERVATION_SLOTS = 10
EPSILON_USD = 1e-9  # sums of floats: $0.01 x 500 must fit a $5.00 cap


@dataclass(frozen=True, slots=True)
class PeriodWindow:
    key: str  # "day:2025-01-14", "month:2025-01" or "total"
    resets_at: float | None  # unix seconds when the next period starts; None for "total"
    starts_at: float | None = None  # unix seconds when this period started; None for "total"


def period_window(period: Period, now_s: float) -> PeriodWindow:
    """The period that `now_s` (unix seconds) falls in."""
    now = datetime.fromtimestamp(now_s, UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
        return PeriodWindow(f"day:{start:%Y-%m-%d}", end.timestamp(), start.timestamp())
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return PeriodWindow(f"month:{start:%Y-%m}", following.timestamp(), start.timestamp())
    return PeriodWindow("total", None)


def expires_in_s(resets_at: float | None, now_s: float) -> int:
    """How long an account of the period ending at `resets_at` must live from now; 0: forever.

    "total" accounts never expire: dropping one would reset a lifetime budget while gateways run.
    """
    if resets_at is None:
        return 0
    return max(1, int(resets_at - now_s + GRACE_S))


def tightest_caps(caps: Sequence[BudgetCap]) -> list[BudgetCap]:
    """One cap per (scope, period), the lowest, so no account is held twice in one reservation."""
    kept: dict[tuple[str, str], BudgetCap] = {}
    for cap in caps:
        seen = kept.get((cap.scope, cap.period))
        if seen is None or cap.limit_usd < seen.limit_usd:
            kept[(cap.scope, cap.period)] = cap
    return list(kept.values())


def over_limit(cap: BudgetCap, committed_usd: float, amount_usd: float) -> bool:
    return committed_usd + amount_usd > cap.limit_usd + EPSILON_USD


def refusal(
    cap: BudgetCap, window: PeriodWindow, committed_usd: float, amount_usd: float, now_s: float
) -> Reservation:
    """The answer naming the cap that has no room: its spend and holds, its limit, when it resets."""
    retry_after_s = 0.0 if window.resets_at is None else max(0.0, window.resets_at - now_s)
    return Reservation(
        allowed=False,
        amount_usd=amount_usd,
        limited_by=f"{cap.scope} {cap.period}",
        spent_usd=committed_usd,
        limit_usd=cap.limit_usd,
        resets_at=window.resets_at,
        retry_after_s=retry_after_s,
    )
