"""No policy ever overdraws a node or a GPU, whatever arrives, leaves or breaks."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from computenet.scheduler.frag import TargetWorkload
from computenet.scheduler.framework import Scheduler
from computenet.scheduler.inventory import MILLI_PER_GPU, Inventory, Node
from computenet.scheduler.policies import POLICIES, make_policy
from computenet.scheduler.request import Request, Spread
from computenet.scheduler.state import AFFINITY_COLUMNS, ClusterState, affinity_column

from .builders import node

TYPES = ("A100", "T4")


@dataclass(frozen=True)
class Unbind:
    pick: int


@dataclass(frozen=True)
class GpuHealth:
    node: int
    gpu: int
    healthy: bool


Op = Request | Unbind | GpuHealth


@st.composite
def nodes(draw: st.DrawFn, index: int) -> Node:
    count = draw(st.sampled_from([0, 1, 2, 4, 8]))
    return node(
        f"n{index}",
        count,
        gpu_type=draw(st.sampled_from(TYPES)),
        cpu=draw(st.integers(4, 32).map(lambda c: c * 1000)),
        mem=draw(st.integers(8_000, 64_000)),
        gpu_mem=draw(st.sampled_from([0, 16_000, 80_000])),
        islands=draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)),
        zone=draw(st.sampled_from(["a", "b"])),
        healthy=draw(st.integers(0, 5)) > 0 if index else True,  # the first node is always healthy
    )


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    size = draw(st.integers(1, 4))
    return Inventory(tuple(draw(nodes(i)) for i in range(size)))


GPU_TYPES = st.sampled_from(
    [frozenset(), frozenset(), frozenset({"A100"}), frozenset({"T4"}), frozenset(TYPES)]
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """A request named '' (the test names them in order of arrival)."""
    kind = draw(st.sampled_from(["share", "share", "whole", "cpu"]))
    deployment, spread = "", None
    if draw(st.integers(0, 3)) == 0:
        deployment = draw(st.sampled_from(["web", "api"]))
        spread = draw(st.none() | st.builds(Spread, st.sampled_from(["node", "zone"]), st.integers(1, 2)))
    cpu = draw(st.integers(0, 8).map(lambda c: c * 1000))
    mem = draw(st.integers(0, 16_000))
    types = draw(GPU_TYPES)
    if kind == "share":
        return Request(
            "",
            cpu,
            mem,
            num_gpu=1,
            gpu_milli=draw(st.integers(1, 999)),
            gpu_memory_mib=draw(st.sampled_from([0, 0, 6000, 12_000, 30_000])),
            gpu_types=types,
            deployment=deployment,
            spread=spread,
        )
    if kind == "whole":
        return Request(
            "",
            cpu,
            mem,
            num_gpu=draw(st.sampled_from([1, 2, 4, 8])),
            gpu_milli=MILLI_PER_GPU,
            gpu_memory_mib=draw(st.sampled_from([0, 16_000, 40_000])),
            gpu_types=types,
            same_island=draw(st.booleans()),
            deployment=deployment,
            spread=spread,
        )
    return Request("", cpu, mem, deployment=deployment, spread=spread)


ops = st.lists(
    st.one_of(
        requests(),
        requests(),
        requests(),
        st.builds(Unbind, st.integers(0, 1000)),
        st.builds(GpuHealth, st.integers(0, 3), st.integers(0, 7), st.booleans()),
    ),
    min_size=10,
    max_size=40,
)


def check_invariants(state: ClusterState) -> None:
    """Nothing overdrawn, and the arrays are exactly the sum of what is bound."""
    assert (state.cpu_free >= 0).all() and (state.mem_free >= 0).all()
    assert ((state.gpu_alloc >= 0) & (state.gpu_alloc <= MILLI_PER_GPU)).all()
    assert ((state.gpu_mem_alloc >= 0) & (state.gpu_mem_alloc <= state.gpu_mem_cap)).all()
    n, g = state.gpu_alloc.shape
    cpu, mem = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    milli, gpu_mem = np.zeros((n, g), dtype=np.int64), np.zeros((n, g), dtype=np.int64)
    affinity = np.zeros((n, AFFINITY_COLUMNS), dtype=np.int64)
    for placement in state.placements.values():
        req, i = placement.request, placement.node
        cpu[i] += req.cpu_milli
        mem[i] += req.memory_mib
        for gpu in placement.gpus:
            milli[i, gpu] += req.gpu_milli
            gpu_mem[i, gpu] += req.gpu_memory_mib if req.is_share else state.gpu_mem_cap[i, gpu]
        if req.num_gpu:
            affinity[i, affinity_column(req)] += 1
    np.testing.assert_array_equal(state.cpu_cap - state.cpu_free, cpu)
    np.testing.assert_array_equal(state.mem_cap - state.mem_free, mem)
    np.testing.assert_array_equal(state.gpu_alloc, milli)
    np.testing.assert_array_equal(state.gpu_mem_alloc, gpu_mem)
    np.testing.assert_array_equal(state.affinity, affinity)
    usable = state.gpu_exists & state.gpu_healthy
    np.testing.assert_array_equal(state.gpu_free, np.where(usable, MILLI_PER_GPU - milli, 0))


def check_placement(state: ClusterState, req: Request, node_index: int, gpus: tuple[int, ...]) -> None:
    """What the filters promise about a new placement."""
    inv = state.inventory.nodes[node_index]
    assert state.node_healthy[node_index]
    assert len(set(gpus)) == req.num_gpu and all(state.gpu_healthy[node_index, i] for i in gpus)
    if req.num_gpu and req.gpu_types:
        assert inv.gpu_type in req.gpu_types
    if req.same_island and req.num_gpu > 1:
        assert len({inv.gpus[i].island for i in gpus}) == 1
    if req.num_gpu and not req.is_share:
        assert all(inv.gpus[i].memory_mib >= req.gpu_memory_mib for i in gpus)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inventory=inventories(), sequence=ops, policy=st.sampled_from(sorted(POLICIES)), seed=st.integers(0, 3)
)
def test_no_policy_ever_overdraws(inventory: Inventory, sequence: list[Op], policy: str, seed: int) -> None:
    arrivals = [replace(op, name=f"r{i}") if isinstance(op, Request) else op for i, op in enumerate(sequence)]
    workload = TargetWorkload.typical([op for op in arrivals if isinstance(op, Request)])
    state = ClusterState(inventory)
    sched = Scheduler(state, make_policy(policy, workload), seed=seed)
    for op in arrivals:
        if isinstance(op, Unbind):
            if state.placements:
                state.unbind(sorted(state.placements)[op.pick % len(state.placements)])
        elif isinstance(op, GpuHealth):
            if op.node < state.node_count and op.gpu < state.gpu_count[op.node]:
                state.set_gpu_health(op.node, op.gpu, op.healthy)
        else:
            decision = sched.place(op)
            if decision.placement is None:
                assert op.name not in state.placements and decision.feasible_nodes == 0
            else:
                check_placement(state, op, decision.placement.node, decision.placement.gpus)
        check_invariants(state)
