"""The Ray pool driver on a real three-node Ray cluster (head, 2 x H100 node, 4 x A10G node) running
real `sim` engines. Nothing is faked; the GPUs are Ray resources the worker nodes declare, which is
all Ray knows of GPUs anyway. The test that kills a node comes last: it takes the H100 node away.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from computenet.api import NodeInfo, PoolSpec
from computenet.pools import ReplicaPhase, ReplicaSpec, ReplicaState
from computenet.pools.ray import RayPool

from .cluster import RayCluster, stop_replicas

pytestmark = pytest.mark.e2e


@pytest.fixture
async def pool(ray_cluster: RayCluster, tmp_path: Path) -> AsyncIterator[RayPool]:
    driver = RayPool(name="gpus", spec=PoolSpec(type="ray", address=ray_cluster.address), state_dir=tmp_path)
    try:
        yield driver
    finally:
        await stop_replicas(driver)
        await driver.close()


def sim(name: str, node: NodeInfo, gpus: int = 1) -> ReplicaSpec:
    return ReplicaSpec(
        name=name,
        deployment="web",
        role="server",
        engine="sim",
        served_name="llm",
        source="sim://llm",
        gpus=gpus,
        gpu_type=node.gpu_type,
        node=node.name,
    )


async def node_of(pool: RayPool, gpu_type: str) -> NodeInfo:
    return next(n for n in await pool.nodes() if n.gpu_type == gpu_type)


async def until(
    pool: RayPool, check: Callable[[dict[str, ReplicaState]], bool], timeout_s: float = 30
) -> dict[str, ReplicaState]:
    """Poll `replicas()` until `check` holds for them (by name); the last states on success."""
    async with asyncio.timeout(timeout_s):
        while True:
            states = {s.name: s for s in await pool.replicas()}
            if check(states):
                return states
            await asyncio.sleep(0.1)


def ready(*names: str) -> Callable[[dict[str, ReplicaState]], bool]:
    return lambda states: all(n in states and states[n].phase == ReplicaPhase.READY for n in names)


def environ(pid: int | None) -> dict[str, str]:
    """The environment a process on this machine was started with."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_nodes_report_every_gpu_model_count_and_address(pool: RayPool) -> None:
    nodes = {n.address: n for n in await pool.nodes()}
    assert {a: (n.gpus, n.gpu_type) for a, n in nodes.items()} == {
        "127.0.0.2": (0, ""),
        "127.0.0.3": (2, "H100"),
        "127.0.0.4": (4, "A10G"),
    }
    assert all(n.ready and n.cpu == 2 and n.memory_gb > 0 for n in nodes.values())
    assert nodes["127.0.0.3"].gpu_memory_gb == pytest.approx(79.6)  # H100's, from the catalogue
    assert all(n.labels["ray.io/node-id"] == n.name for n in nodes.values())


async def test_a_replica_runs_on_its_node_with_its_gpus_serves_and_stops(pool: RayPool) -> None:
    a10g = await node_of(pool, "A10G")
    await pool.start(sim("web-server-0", a10g, gpus=2))
    state = (await until(pool, ready("web-server-0")))["web-server-0"]
    assert state.node == a10g.name and state.url is not None
    assert state.url.startswith(f"http://{a10g.address}:")
    assert len(state.spec.gpu_ids) == 2 and set(state.spec.gpu_ids) <= {0, 1, 2, 3}
    assert environ(state.pid)["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in state.spec.gpu_ids)

    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(
            state.url + "/v1/completions", json={"model": "llm", "prompt": "hi", "max_tokens": 3}
        )
    assert resp.status_code == 200 and resp.json()["choices"]
    assert "starting (restart 0)" in await pool.logs("web-server-0")

    await pool.stop("web-server-0")
    assert await pool.replicas() == []
    assert not alive(state.pid)


async def test_an_engine_that_exits_is_restarted_on_the_same_node(pool: RayPool) -> None:
    h100 = await node_of(pool, "H100")
    await pool.start(sim("web-server-0", h100))
    first = (await until(pool, ready("web-server-0")))["web-server-0"]
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    again = await until(pool, lambda s: ready("web-server-0")(s) and s["web-server-0"].restarts == 1)
    second = again["web-server-0"]
    assert second.pid != first.pid and second.node == h100.name
    assert second.last_exit_code == -signal.SIGKILL


async def test_a_new_driver_adopts_running_replicas_and_survives_its_agent(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    spec = PoolSpec(type="ray", address=ray_cluster.address)
    first = RayPool(name="gpus", spec=spec, state_dir=tmp_path)
    try:
        h100, a10g = await node_of(first, "H100"), await node_of(first, "A10G")
        await first.start(sim("web-server-0", h100))
        await first.start(sim("web-server-1", a10g))
        before = await until(first, ready("web-server-0", "web-server-1"))
    finally:
        await first.close()  # a control plane that goes away: its replicas keep serving

    second = RayPool(name="gpus", spec=spec, state_dir=tmp_path)
    other = RayPool(name="elsewhere", spec=spec, state_dir=tmp_path)
    try:
        adopted = await until(second, ready("web-server-0", "web-server-1"))
        assert {n: (s.pid, s.node) for n, s in adopted.items()} == {
            n: (s.pid, s.node) for n, s in before.items()
        }
        with pytest.raises(ValueError, match="already runs"):
            await second.start(sim("web-server-0", h100))
        assert await other.replicas() == []  # another pool on the same cluster does not take them

        assert second.agent_pid is not None
        os.kill(second.agent_pid, signal.SIGKILL)  # the agent dies; the next refresh starts another
        await asyncio.sleep(1)
        after = await until(second, ready("web-server-0", "web-server-1"))
        assert {n: s.pid for n, s in after.items()} == {n: s.pid for n, s in before.items()}
    finally:
        await stop_replicas(second)
        await asyncio.gather(second.close(), other.close())
    assert not any(alive(s.pid) for s in before.values())


async def test_a_pool_reached_through_ray_client_runs_replicas_too(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    spec = PoolSpec(type="ray", address=ray_cluster.client_address)
    pool = RayPool(name="gpus", spec=spec, state_dir=tmp_path)
    try:
        a10g = await node_of(pool, "A10G")
        await pool.start(sim("web-server-0", a10g))
        state = (await until(pool, ready("web-server-0")))["web-server-0"]
        assert state.node == a10g.name
    finally:
        await stop_replicas(pool)
        await pool.close()


async def test_killing_a_node_makes_its_replicas_lost(pool: RayPool, ray_cluster: RayCluster) -> None:
    h100, a10g = await node_of(pool, "H100"), await node_of(pool, "A10G")
    await pool.start(sim("web-server-0", h100))
    await pool.start(sim("web-server-1", a10g))
    before = await until(pool, ready("web-server-0", "web-server-1"))

    ray_cluster.kill("h100")
    # Lost as soon as Ray reports the actor dead, and then (within seconds) its node dead too.
    states = await until(pool, lambda s: s["web-server-0"].message == f"its Ray node {h100.name} is dead")
    assert states["web-server-0"].phase == ReplicaPhase.LOST
    assert states["web-server-1"].phase == ReplicaPhase.READY
    assert not next(n for n in await pool.nodes() if n.name == h100.name).ready
    assert not alive(before["web-server-0"].pid)

    await pool.stop("web-server-0")  # what the reconciler does before placing it elsewhere
    assert [s.name for s in await pool.replicas()] == ["web-server-1"]
