"""A worker node of a Ray pool dies under traffic: its replicas are placed again on the node that is left,
and no request through the gateway fails before its first byte.

The fleet (`fleet.py`): the reconciler, a Ray pool and the gateway in this process, `sim` engines in
detached actors on a real three-node Ray cluster (head, 2 x H100, 4 x A10G, on loopback addresses). The
deployment spreads its two one-GPU replicas over nodes (`spread: {key: node}`), so one lands on each GPU
node (the GPU-less head does not count as a domain for GPU replicas); killing the A10G node (every process
of it, as a power loss would) leaves the H100 node, which has room for both, and the spread, counting only
live nodes, lets the replacement join its sibling there.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .cluster import RayCluster
from .fleet import Fleet, fleet_on

pytestmark = pytest.mark.e2e


@pytest.fixture
async def fleet(ray_cluster: RayCluster, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with fleet_on(ray_cluster, tmp_path) as fleet:
        yield fleet


@dataclass
class Traffic:
    """Streamed completions sent back to back by a few clients, and how each one ended."""

    url: str
    served_by: Counter[str] = field(default_factory=Counter)
    failed_before_first_byte: list[str] = field(default_factory=list)
    broken_after_first_byte: int = 0  # a stream cut when its replica's node died: allowed

    async def run(self, stop: asyncio.Event, clients: int = 3) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._client(client, stop) for _ in range(clients)))

    async def _client(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        body = {"model": "llm", "prompt": "hello", "max_tokens": 16, "stream": True}
        while not stop.is_set():
            first_byte = False
            try:
                async with client.stream("POST", f"{self.url}/v1/completions", json=body) as resp:
                    if resp.status_code != 200:
                        self.failed_before_first_byte.append(
                            f"{resp.status_code}: {(await resp.aread())[:200]!r}"
                        )
                        continue
                    async for _ in resp.aiter_bytes():
                        first_byte = True
                    self.served_by[resp.headers["x-computenet-replica"]] += 1
            except httpx.HTTPError as exc:
                if first_byte:
                    self.broken_after_first_byte += 1
                else:
                    self.failed_before_first_byte.append(repr(exc))


async def test_a_dead_node_s_replicas_move_to_the_node_left_and_traffic_goes_on(
    fleet: Fleet, ray_cluster: RayCluster
) -> None:
    nodes = await fleet.node_names()
    h100, a10g = nodes["127.0.0.3"], nodes["127.0.0.4"]
    before = await fleet.until_ready_on({h100, a10g})  # least allocated: one on each GPU node
    moved = next(name for name, s in before.items() if s.node == a10g)

    traffic, stop = Traffic(fleet.url), asyncio.Event()
    sending = asyncio.create_task(traffic.run(stop))
    try:
        await asyncio.sleep(1)  # traffic flows to both replicas
        ray_cluster.kill("a10g")
        after = await fleet.until_ready_on({h100})
        served_before_move = sum(traffic.served_by.values())
        await asyncio.sleep(1)  # and keeps flowing, to both replicas on the H100 node
    finally:
        stop.set()
        await sending

    assert traffic.failed_before_first_byte == [], traffic.failed_before_first_byte
    assert after[moved].pid != before[moved].pid  # started again, not the same process reported
    assert sum(traffic.served_by.values()) > served_before_move
    assert set(traffic.served_by) == {"web-server-0", "web-server-1"}
