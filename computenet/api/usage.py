"""One metered request, as the gateway records it and the store keeps it.

The gateway never writes the store itself (it may not import it): it hands batches
of `UsageRecord` to a `UsageSink`, which `computenet up` backs with the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    started_at: float  # unix seconds when the request arrived
    tenant: str  # "" when auth is off
    key_id: str  # "" when auth is off
    model: str  # the public model name the client asked for
    backend: str  # "deployment/<name>" or "provider/<name>"; "" when no backend was reached
    endpoint: str  # the replica, or the provider's model name
    region: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float
    ttft_s: float | None  # streams only: time to the first content chunk
    latency_s: float  # arrival to last byte sent
    status: int  # HTTP status the client saw (499: the client went away)
    estimated: bool = False  # tokens counted by the gateway because the backend sent no usage


class UsageSink(Protocol):
    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        """Persist a batch. Raise on failure: the caller keeps the batch and tries again."""
