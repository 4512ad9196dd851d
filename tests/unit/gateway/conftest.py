"""Fixtures the gateway's test modules share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from computenet.gateway.routing.kv_events import KVEventSubscriber
from computenet.gateway.routing.kv_index import KVBlockIndex


@pytest.fixture
async def subscriber() -> AsyncIterator[KVEventSubscriber]:
    subscriber = KVEventSubscriber(KVBlockIndex(), replay_timeout_s=0.2)
    await subscriber.start()
    yield subscriber
    await subscriber.close()
