"""The token-bucket arithmetic both rate limiters share, and OpenAI's x-ratelimit-* headers.

A bucket holds at most `capacity` (the per-window limit) and refills at capacity / window per
second, so a client may burst a whole window's worth and then goes at the steady rate. A request
needs min(cost, capacity): a request larger than the whole bucket is let through when the bucket
is full and leaves it in debt, instead of being refused forever. The Redis backend runs the same
arithmetic in Lua; these functions are the reference it is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .base import Admission, Limit

REQUESTS = "requests"
TOKENS = "tokens"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One scope's bucket in one dimension, and what this request costs it."""

    scope: str
    dimension: str  # REQUESTS or TOKENS
    capacity: int
    cost: int

    @property
    def name(self) -> str:
        return f"{self.scope} {self.dimension}"


def buckets_of(limits: Sequence[Limit], estimated_tokens: int) -> list[Bucket]:
    """The buckets one request touches. A scope named twice keeps its tighter limit, so a bucket is
    never read and charged twice in one atomic step."""
    tightest: dict[tuple[str, str], int] = {}
    for limit in limits:
        for dimension, capacity in ((REQUESTS, limit.requests_per_minute), (TOKENS, limit.tokens_per_minute)):
            if capacity is not None:
                key = (limit.scope, dimension)
                tightest[key] = min(capacity, tightest.get(key, capacity))
    costs = {REQUESTS: 1, TOKENS: max(0, estimated_tokens)}
    return [Bucket(scope, dim, capacity, costs[dim]) for (scope, dim), capacity in tightest.items()]


def refill(level: float, elapsed_s: float, capacity: int, window_s: float) -> float:
    return min(float(capacity), level + max(0.0, elapsed_s) * capacity / window_s)


def wait_s(level: float, bucket: Bucket, window_s: float) -> float:
    """How long until the bucket holds what this request needs (0 when it already does)."""
    need = min(bucket.cost, bucket.capacity)
    return max(0.0, (need - level) * window_s / bucket.capacity)


def admission(
    buckets: Sequence[Bucket],
    levels: Sequence[float],
    refused_by: int | None,
    retry_after_s: float,
    window_s: float,
    estimated_tokens: int,
) -> Admission:
    """The answer for buckets whose levels are known (after charging when allowed, before if not)."""
    headers = ratelimit_headers(buckets, levels, window_s)
    if refused_by is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))
        return Admission(False, retry_after_s, buckets[refused_by].name, headers)
    token_limits = tuple((b.scope, b.capacity) for b in buckets if b.dimension == TOKENS)
    charged = max(0, estimated_tokens)  # what buckets_of charged; settle corrects from this
    return Admission(True, 0.0, "", headers, estimated_tokens=charged, token_limits=token_limits)


def ratelimit_headers(buckets: Sequence[Bucket], levels: Sequence[float], window_s: float) -> dict[str, str]:
    """OpenAI's trio per dimension, from that dimension's tightest bucket (fewest left, then smallest)."""
    headers: dict[str, str] = {}
    for dimension in (REQUESTS, TOKENS):
        rows = [(lvl, b) for b, lvl in zip(buckets, levels, strict=True) if b.dimension == dimension]
        if not rows:
            continue
        level, bucket = min(rows, key=lambda row: (row[0], row[1].capacity))
        until_full_s = (bucket.capacity - level) * window_s / bucket.capacity
        headers[f"x-ratelimit-limit-{dimension}"] = str(bucket.capacity)
        headers[f"x-ratelimit-remaining-{dimension}"] = str(max(0, math.floor(level)))
        headers[f"x-ratelimit-reset-{dimension}"] = format_duration(until_full_s)
    return headers


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it (Go's style): "20ms", "1s", "6m0s", "1h2m3.5s"."""
    ms = math.ceil(round(max(0.0, seconds) * 1000, 6))  # round first: 0.1 * 1000 is not 101 ms
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms_left = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms_left / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{secs}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text
