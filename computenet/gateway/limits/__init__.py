"""Rate limits and budgets of the gateway, kept in process (one gateway) or in Redis (replicas).

The gateway asks a RateLimiter before it sends a request upstream (429 when refused) and settles
it with the real token count afterwards; it asks a BudgetLedger to hold the request's estimated
cost (so concurrent requests cannot overshoot a cap together) and settles it with the real cost.
See docs/gateway-limits.md.
"""

from .base import (
    Admission,
    BudgetCap,
    BudgetLedger,
    FailureMode,
    Hold,
    Limit,
    LimitsUnavailableError,
    Period,
    RateLimiter,
    Reservation,
)
from .buckets import format_duration
from .memory import MemoryBudgetLedger, MemoryRateLimiter
from .redis_budget import RedisBudgetLedger
from .redis_rate import RedisRateLimiter

__all__ = [
    "Admission",
    "BudgetCap",
    "BudgetLedger",
    "FailureMode",
    "Hold",
    "Limit",
    "LimitsUnavailableError",
    "MemoryBudgetLedger",
    "MemoryRateLimiter",
    "Period",
    "RateLimiter",
    "RedisBudgetLedger",
    "RedisRateLimiter",
    "Reservation",
    "format_duration",
]
