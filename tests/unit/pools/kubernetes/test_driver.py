"""The Kubernetes pool driver against a fake API server (`kube_fake.py`), at the HTTP level.

There is no API server on these machines: the fake implements, on 127.0.0.1, the verbs the driver
uses (get, list, watch, server-side apply, merge patch, delete) with resourceVersion semantics, and
plays the controllers (pods for each workload object), the kubelet (`make_ready`, `crash_loop`) and
the node lifecycle (`delete_node`) as each test says. The driver reaches it through a real kubeconfig
file loaded by the official `kubernetes` package, and real aiohttp connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from computenet.api import PoolSpec
from computenet.pools import ReplicaPhase, ReplicaSpec, ReplicaState
from computenet.pools.kubernetes.client import Gone
from computenet.pools.kubernetes.driver import KubernetesPool
from computenet.pools.kubernetes.kubeconfig import ClusterAccessError

from .kube_fake import FakeKube, kubeconfig, serve_fake

POOL = "gpu-east"


def replica(name: str = "chat-server-0", *, role: str = "server", **kw: Any) -> ReplicaSpec:
    """A sim replica of deployment `<name minus -role-ordinal>`, placed on gpu-1 unless `node` says."""
    fields = {"engine": "sim", "node": "gpu-1", "template_hash": "h1", **kw}
    return ReplicaSpec(name, name.rsplit("-", 2)[0], role, served_name="chat", source="sim://chat", **fields)


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
async def pool_spec(fake: FakeKube, tmp_path: Path) -> AsyncIterator[PoolSpec]:
    async with serve_fake(fake) as url:
        fake.add_node("gpu-1")
        fake.add_node("gpu-2")
        config = kubeconfig(url, tmp_path / "kubeconfig")
        yield PoolSpec(
            type="kubernetes", region="us-east", zone="us-east-1a", kubeconfig=str(config), context="fake"
        )


@pytest.fixture
async def pool(pool_spec: PoolSpec, tmp_path: Path) -> AsyncIterator[KubernetesPool]:
    driver = KubernetesPool(name=POOL, spec=pool_spec, state_dir=tmp_path)
    yield driver
    await driver.close()


async def state_of(pool: KubernetesPool, name: str) -> ReplicaState:
    return next(r for r in await pool.replicas() if r.name == name)


async def test_start_applies_labelled_objects_and_a_ready_pod_makes_the_replica_ready(
    pool: KubernetesPool, fake: FakeKube
) -> None:
    await pool.start(replica())
    (deployment,) = fake.of_kind("Deployment")
    assert deployment["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "computenet",
        "computenet.io/pool": POOL,
        "computenet.io/deployment": "chat",
        "computenet.io/role": "server",
        "computenet.io/replica": "chat-server-0",
        "computenet.io/template-hash": "h1",
    }
    assert [s["metadata"]["name"] for s in fake.of_kind("Service")] == ["chat-server"]
    assert (await state_of(pool, "chat-server-0")).phase == ReplicaPhase.STARTING

    (pod,) = fake.pods(**{"computenet.io/replica": "chat-server-0"})
    fake.make_ready(pod["metadata"]["name"], "10.1.0.5")
    state = await state_of(pool, "chat-server-0")
    assert (state.phase, state.url, state.node, state.pool) == (
        ReplicaPhase.READY,
        "http://10.1.0.5:8000",
        "gpu-1",
        POOL,
    )
    assert state.spec == replica()  # read back from the cluster, not from memory


async def test_a_restarted_control_plane_sees_the_same_replicas_and_starting_again_duplicates_nothing(
    pool: KubernetesPool, pool_spec: PoolSpec, fake: FakeKube, tmp_path: Path
) -> None:
    await pool.start(replica())
    (pod,) = fake.pods()
    fake.make_ready(pod["metadata"]["name"], "10.1.0.5")
    await pool.close()
    version = fake.version

    again = KubernetesPool(name=POOL, spec=pool_spec, state_dir=tmp_path)
    try:
        (state,) = await again.replicas()
        assert (state.name, state.phase, state.url) == (
            "chat-server-0",
            ReplicaPhase.READY,
            "http://10.1.0.5:8000",
        )
        await again.start(replica())
    finally:
        await again.close()
    assert len(fake.of_kind("Deployment")) == 1 and len(fake.of_kind("Service")) == 1
    assert [p["metadata"]["uid"] for p in fake.pods()] == [
        pod["metadata"]["uid"]
    ]  # the same pod, still serving
    assert fake.version == version  # the second apply changed nothing at all


async def test_a_changed_template_is_applied_to_the_same_object(pool: KubernetesPool, fake: FakeKube) -> None:
    await pool.start(replica())
    await pool.start(replica(template_hash="h2", args={"max_num_seqs": 4}))
    (deployment,) = fake.of_kind("Deployment")
    assert deployment["metadata"]["labels"]["computenet.io/template-hash"] == "h2"
    (state,) = await pool.replicas()
    assert state.spec.template_hash == "h2"


async def test_stop_deletes_the_replica_and_its_service_once_the_role_has_no_replica(
    pool: KubernetesPool, fake: FakeKube
) -> None:
    await pool.start(replica("chat-server-0"))
    await pool.start(replica("chat-server-1", node="gpu-2"))
    await pool.stop("chat-server-0")
    assert [d["metadata"]["name"] for d in fake.of_kind("Deployment")] == ["chat-server-1"]
    assert [p["metadata"]["labels"]["computenet.io/replica"] for p in fake.pods()] == ["chat-server-1"]
    assert [s["metadata"]["name"] for s in fake.of_kind("Service")] == ["chat-server"]
    await pool.stop("chat-server-1")
    assert fake.of_kind("Deployment") == [] and fake.of_kind("Service") == [] and fake.pods() == []
    assert await pool.replicas() == []


async def test_garbage_collection_deletes_only_this_pools_orphans(
    pool: KubernetesPool, fake: FakeKube
) -> None:
    await pool.start(replica())
    owned = {"app.kubernetes.io/managed-by": "computenet", "computenet.io/pool": POOL}
    orphan = {**owned, "computenet.io/deployment": "gone", "computenet.io/role": "server"}
    other_pool = {**orphan, "computenet.io/pool": "gpu-west"}
    for name, labels in (("gone-server", orphan), ("west-server", other_pool), ("users-own", {})):
        meta = {"name": name, "namespace": "default", "labels": labels}
        fake.apply({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"selector": labels}})

    assert await pool.collect_garbage() == ["Service/gone-server"]
    names = sorted(s["metadata"]["name"] for s in fake.of_kind("Service"))
    assert names == ["chat-server", "users-own", "west-server"]


async def test_the_watch_wakes_the_driver_when_a_pod_changes(pool: KubernetesPool, fake: FakeKube) -> None:
    await pool.start(replica())
    changed = pool.watch()
    await asyncio.wait_for(changed.wait(), 5)  # the first list
    changed.clear()
    (pod,) = fake.pods()
    fake.make_ready(pod["metadata"]["name"], "10.1.0.5")
    await asyncio.wait_for(changed.wait(), 5)
    assert (await state_of(pool, "chat-server-0")).phase == ReplicaPhase.READY


async def test_a_watch_from_a_compacted_version_is_gone(pool: KubernetesPool, fake: FakeKube) -> None:
    _, version = await pool.client.list("Pod", "default", {"computenet.io/pool": POOL})
    fake.compact()
    with pytest.raises(Gone):
        async for _ in pool.client.watch("Pod", "default", {"computenet.io/pool": POOL}, version):
            pass


async def test_the_watch_lists_again_when_its_version_was_compacted_away(
    pool: KubernetesPool, fake: FakeKube
) -> None:
    await pool.start(replica())
    changed = pool.watch()
    await asyncio.wait_for(changed.wait(), 5)
    fake.compact()
    fake.drop_watches()  # the watcher comes back with a version the server no longer has: 410, relist
    changed.clear()
    await asyncio.wait_for(changed.wait(), 5)
    changed.clear()
    (pod,) = fake.pods()
    fake.make_ready(pod["metadata"]["name"], "10.1.0.5")
    await asyncio.wait_for(changed.wait(), 5)  # and it watches again from the new list's version


async def test_a_replica_whose_node_is_gone_is_lost(pool: KubernetesPool, fake: FakeKube) -> None:
    await pool.start(replica())
    (pod,) = fake.pods()
    fake.make_ready(pod["metadata"]["name"], "10.1.0.5")
    fake.set_node_ready("gpu-1", False)
    assert (await state_of(pool, "chat-server-0")).phase == ReplicaPhase.LOST
    fake.delete_node("gpu-1")
    state = await state_of(pool, "chat-server-0")
    assert state.phase == ReplicaPhase.LOST and "gpu-1" in state.message


async def test_a_crash_looping_engine_is_in_backoff_with_its_exit_code(
    pool: KubernetesPool, fake: FakeKube
) -> None:
    await pool.start(replica())
    (pod,) = fake.pods()
    fake.crash_loop(pod["metadata"]["name"], exit_code=137)
    state = await state_of(pool, "chat-server-0")
    assert (state.phase, state.last_exit_code, state.restarts) == (ReplicaPhase.BACKOFF, 137, 3)


async def test_without_the_rbg_crd_a_pd_group_is_admitted_only_when_whole(
    fake: FakeKube, pool_spec: PoolSpec, tmp_path: Path
) -> None:
    fake.crds.clear()
    pool = KubernetesPool(name=POOL, spec=pool_spec, state_dir=tmp_path)
    try:
        await pool.start(replica("pd-prefill-0", role="prefill"))
        (prefill,) = fake.pods()
        assert prefill["spec"]["schedulingGates"] == [{"name": "computenet.io/group-admission"}]
        state = await state_of(pool, "pd-prefill-0")
        assert state.phase == ReplicaPhase.STARTING and "group" in state.message

        await pool.start(replica("pd-decode-0", role="decode", node="gpu-2"))
        assert [p["spec"].get("schedulingGates") for p in fake.pods()] == [None, None]
        assert [s["kind"] for s in fake.of_kind("StatefulSet")] == ["StatefulSet", "StatefulSet"]
        for i, pod in enumerate(fake.pods()):
            fake.make_ready(pod["metadata"]["name"], f"10.1.0.{i + 1}")
        assert {r.phase for r in await pool.replicas()} == {ReplicaPhase.READY}
    finally:
        await pool.close()


async def test_with_the_rbg_crd_a_pd_deployment_is_one_role_based_group(
    pool: KubernetesPool, fake: FakeKube
) -> None:
    await pool.start(replica("pd-prefill-0", role="prefill"))
    await pool.start(replica("pd-decode-0", role="decode", node="gpu-2"))
    await pool.start(replica("pd-router-0", role="router", node="gpu-2"))
    (group,) = fake.of_kind("RoleBasedGroup")
    roles = {r["name"]: r for r in group["spec"]["roles"]}
    assert sorted(roles) == ["decode-0", "prefill-0", "router-0"]
    assert roles["router-0"]["dependencies"] == ["decode-0", "prefill-0"]
    assert sorted(r.name for r in await pool.replicas()) == ["pd-decode-0", "pd-prefill-0", "pd-router-0"]
    assert fake.of_kind("StatefulSet") == []

    await pool.stop("pd-decode-0")
    (group,) = fake.of_kind("RoleBasedGroup")
    assert [r["name"] for r in group["spec"]["roles"]] == ["prefill-0", "router-0"]
    assert sorted(s["metadata"]["name"] for s in fake.of_kind("Service")) == ["pd-prefill", "pd-router"]
    await pool.stop("pd-prefill-0")
    await pool.stop("pd-router-0")
    assert fake.of_kind("RoleBasedGroup") == [] and fake.of_kind("Service") == []


async def test_a_multi_node_replica_is_a_leader_worker_set(pool: KubernetesPool, fake: FakeKube) -> None:
    await pool.start(replica("big-server-0", engine="vllm", gpus=16, nodes=2))
    (lws,) = fake.of_kind("LeaderWorkerSet")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert len(fake.pods()) == 2
    for i, pod in enumerate(fake.pods()):
        fake.make_ready(pod["metadata"]["name"], f"10.1.0.{i + 1}")
    state = await state_of(pool, "big-server-0")
    assert (state.phase, state.url) == (ReplicaPhase.READY, "http://10.1.0.1:8000")  # the leader's


async def test_a_multi_node_replica_without_the_lws_crd_is_a_clear_error(
    fake: FakeKube, pool: KubernetesPool
) -> None:
    fake.crds.clear()
    with pytest.raises(ValueError, match="LeaderWorkerSet CRD"):
        await pool.start(replica("big-server-0", engine="vllm", gpus=16, nodes=2))


async def test_nodes_report_gpus_taints_readiness_and_address(pool: KubernetesPool, fake: FakeKube) -> None:
    fake.add_node(
        "gpu-3",
        gpus=4,
        product="NVIDIA-A100-SXM4-80GB",
        ready=False,
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        labels={"topology.kubernetes.io/zone": "us-east-1b"},
    )
    fake.add_node("cpu-1", gpus=0)
    nodes = {n.name: n for n in await pool.nodes()}
    gpu3 = nodes["gpu-3"]
    assert (gpu3.gpus, gpu3.gpu_type, gpu3.gpu_memory_gb, gpu3.ready) == (
        4,
        "NVIDIA-A100-SXM4-80GB",
        79.6,
        False,
    )
    assert gpu3.taints == ["nvidia.com/gpu=present:NoSchedule"]
    assert (
        gpu3.labels["topology.kubernetes.io/zone"] == "us-east-1b"
        and gpu3.labels["computenet.io/pool"] == POOL
    )
    assert gpu3.address.startswith("10.0.0.") and gpu3.cpu == 96.0
    assert (nodes["cpu-1"].gpus, nodes["cpu-1"].gpu_type) == (0, "")
    assert nodes["gpu-1"].ready


async def test_logs_come_from_the_replicas_pod(pool: KubernetesPool, fake: FakeKube) -> None:
    await pool.start(replica())
    assert (await pool.logs("chat-server-0", tail_lines=2)).count("\n") == 2
    with pytest.raises(KeyError, match="no pod for replica"):
        await pool.logs("nobody-0")


async def test_an_unreadable_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    spec = PoolSpec(type="kubernetes", kubeconfig=str(tmp_path / "missing"), context="prod")
    pool = KubernetesPool(name=POOL, spec=spec, state_dir=tmp_path)
    with pytest.raises(ClusterAccessError, match="missing"):
        await pool.nodes()
    await pool.close()
