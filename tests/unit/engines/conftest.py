"""Fixtures for the engine tests: fresh in-process sims behind httpx clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sim_testkit import FAST_TIME_SCALE, MODEL, SimClientFactory

from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app


@pytest.fixture
async def make_sim() -> AsyncIterator[SimClientFactory]:
    """`await make_sim(**config)` -> an httpx client bound to a fresh in-process sim app.

    Steps run `FAST_TIME_SCALE` times faster than the simulated H100 unless a test says otherwise.
    """
    clients: list[httpx.AsyncClient] = []

    async def factory(**overrides: Any) -> httpx.AsyncClient:
        config = SimConfig(**{"model": MODEL, "time_scale": FAST_TIME_SCALE, **overrides})
        app = create_app(config)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def sim(make_sim: SimClientFactory) -> httpx.AsyncClient:
    return await make_sim()
