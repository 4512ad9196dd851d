"""What the gateway asks of a rate limiter and a budget ledger, whatever stores their state.

Both seams are async and all-or-nothing: one call checks every scope (key, tenant, model) and
either charges all of them or none, so a refusal by the tenant's limit never eats into the key's.
The results carry what the gateway needs to answer the client (429 or 503, Retry-After, OpenAI's
x-ratelimit-* headers) and what the backend needs to settle the request once its real usage is
known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

FailureMode = Literal["open", "closed"]
"""What a shared backend answers while it cannot be reached: admit everything (open) or nothing."""

Period = Literal["day", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "month", "total")

UNAVAILABLE_RETRY_AFTER_S = 1.0  # fail-closed answers 503 and asks the client to come back this soon


class LimitsUnavailableError(Exception):
    """The shared backend could not be asked (unreachable, too slow, or answered an error)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """Per-minute limits of one scope: "key:<id>", "tenant:<name>" or "model:<public name>".

    None means not limited in that dimension. The bucket holds one window's worth (a burst of a
    whole minute is allowed, as with OpenAI's limits) and refills continuously.
    """

    scope: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Limit({self.scope!r}).{name} must be positive or None, not {value}")


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer for one request.

    `headers` holds OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} of the tightest
    scope in each dimension, and retry-after / retry-after-ms when refused: copy them onto the
    response as they are. `estimated_tokens` and `token_limits` are what `settle` corrects later.
    """

    allowed: bool
    retry_after_s: float = 0.0
    limited_by: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    unavailable: bool = False
    estimated_tokens: int = 0
    token_limits: tuple[tuple[str, int], ...] = ()  # (scope, tokens per window) of each charged bucket


class RateLimiter(Protocol):
    """Requests and tokens per window, per scope; one implementation per place the state lives."""

    async def admit(self, limits: Sequence[Limit], estimated_tokens: int) -> Admission:
        """Charge 1 request and `estimated_tokens` to every scope, or nothing when any has no room."""
        ...

    async def settle(self, admission: Admission, actual_tokens: int) -> None:
        """Correct the token buckets by actual - estimated (debt allowed); logs, never raises."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BudgetCap:
    """A spend cap of one scope over one UTC calendar period ("total" never resets)."""

    scope: str
    limit_usd: float
    period: Period = "month"

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(
                f"BudgetCap({self.scope!r}).period must be one of {PERIODS}, not {self.period!r}"
            )
        if self.limit_usd < 0:
            raise ValueError(f"BudgetCap({self.scope!r}).limit_usd must not be negative")


@dataclass(frozen=True, slots=True)
class Hold:
    """One account a reservation holds money in, with its period (a settle may come after it ends)."""

    scope: str
    period_key: str  # "day:2025-01-14", "month:2025-01" or "total"
    resets_at: float | None


@dataclass(frozen=True, slots=True)
class Reservation:
    """The ledger's answer: money held for one request until `settle` replaces it by the real cost.

    When refused, `limited_by` names the cap ("tenant:acme month"), `spent_usd` is its spend plus
    what is held for requests in flight, and `resets_at` (unix seconds, None for "total") says when
    the period starts afresh.
    """

    allowed: bool
    amount_usd: float = 0.0
    limited_by: str = ""
    spent_usd: float = 0.0
    limit_usd: float = 0.0
    resets_at: float | None = None
    retry_after_s: float = 0.0
    unavailable: bool = False
    held: tuple[Hold, ...] = ()  # accounts charged at settle; empty when refused
    slot: int = -1  # the reservation slot the amount is held in; -1: nothing held (backend was down)

    @property
    def message(self) -> str:
        """A sentence a client can act on."""
        if self.allowed:
            return ""
        if self.unavailable:
            return "The budget ledger is unavailable; retry shortly."
        when = "it never resets" if self.resets_at is None else f"it resets at {_iso(self.resets_at)}"
        return (
            f"Budget exceeded for {self.limited_by}: ${self.spent_usd:.4f} spent or reserved "
            f"of ${self.limit_usd:.2f}, and this request needs ${self.amount_usd:.4f}; {when}."
        )


class BudgetLedger(Protocol):
    """Spend per scope and period, held before a request is sent so concurrent ones cannot overshoot."""

    async def reserve(self, caps: Sequence[BudgetCap], amount_usd: float) -> Reservation:
        """Hold `amount_usd` under every cap, or nothing when any would go over its limit."""
        ...

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replace the held amount by the actual cost; logs, never raises."""
        ...

    async def spent(self, scope: str, period: Period) -> float:
        """Settled spend of the current period (reservations in flight excluded)."""
        ...

    async def seed(self, scope: str, period: Period, spent_usd: float) -> None:
        """Raise the current period's spend to at least `spent_usd` (from metered usage, at startup)."""
        ...

    async def close(self) -> None: ...


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
