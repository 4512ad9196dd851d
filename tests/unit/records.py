"""A `UsageRecord` for tests: every field filled in, any of them overridden by name."""

from __future__ import annotations

import dataclasses
from typing import Any

from computenet.api import UsageRecord

_BASE = UsageRecord(
    request_id="r",
    started_at=1_700_000_000.0,
    tenant="acme",
    key_id="k",
    model="llm",
    backend="deployment/web",
    endpoint="web-0",
    region="local",
    prompt_tokens=10,
    cached_tokens=0,
    completion_tokens=5,
    cost_usd=0.5,
    ttft_s=None,
    latency_s=0.5,
    status=200,
)


def usage_record(request_id: str, **fields: Any) -> UsageRecord:
    return dataclasses.replace(_BASE, request_id=request_id, **fields)
