"""The trace protocol (FGD-PROTOCOL.md section 2), the trace files, and replay's curves (section 3)."""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from computenet.scheduler.inventory import Inventory
from computenet.scheduler.policies import POLICIES
from computenet.scheduler.replay import ReplayResult, replay
from computenet.scheduler.request import Request
from computenet.scheduler.trace import TraceError, load_nodes, load_pods, protocol_nodes, protocol_workload

from .builders import cpu_pod, node, share, whole


def _pods() -> list[Request]:
    """12 pods asking for 6.5 GPUs in all, named out of order."""
    pods = [whole(f"w{i:02d}", 1) for i in range(4)]
    pods += [share(f"s{i:02d}", 250) for i in range(6)]
    pods += [whole("w-big", 1), cpu_pod("c00")]
    return pods[::-1]


def names(pods: Sequence[Request]) -> list[str]:
    return [p.name for p in pods]


def demand(pods: Sequence[Request]) -> int:
    return sum(p.gpu_demand_milli for p in pods)


# ---- protocol_workload ----------------------------------------------------------------------------------


def test_the_order_is_a_shuffle_fixed_by_the_seed() -> None:
    pods = _pods()
    assert demand(pods) == 6500
    first = protocol_workload(pods, 6500, seed=42, inflate=1.0)
    assert sorted(names(first)) == sorted(names(pods))  # nothing added or removed at exactly the target
    assert names(protocol_workload(pods, 6500, seed=42, inflate=1.0)) == names(first)
    others = {tuple(names(protocol_workload(pods, 6500, seed=s, inflate=1.0))) for s in range(43, 48)}
    assert tuple(names(first)) not in others and len(others) == 5


def test_the_shuffle_starts_from_the_pods_sorted_by_name() -> None:
    pods = _pods()
    rng = np.random.default_rng(5)
    scrambled = [pods[i] for i in rng.permutation(len(pods))]
    assert names(protocol_workload(scrambled, 6500, seed=7, inflate=1.0)) == names(
        protocol_workload(pods, 6500, seed=7, inflate=1.0)
    )
    # the same permutation numpy draws for the seed, applied to the sorted list
    base = sorted(pods, key=lambda p: p.name)
    expected = [base[i].name for i in np.random.default_rng(7).permutation(len(base))]
    assert names(protocol_workload(pods, 6500, seed=7, inflate=1.0)) == expected


@pytest.mark.parametrize("seed", [42, 43, 44, 45])
def test_inflation_appends_copies_up_to_the_target_and_never_past_it(seed: int) -> None:
    pods = _pods()
    shuffled = protocol_workload(pods, 6500, seed=seed, inflate=1.0)
    out = protocol_workload(pods, 5000, seed=seed, inflate=2.0)  # target 10000 milli
    assert names(out[: len(pods)]) == names(shuffled)  # the trace first, as shuffled
    extra = out[len(pods) :]
    assert extra and 10_000 - 1000 < demand(out) <= 10_000  # stopped by a draw that would pass it
    by_name = {p.name: p for p in pods}
    seen: dict[str, int] = {}
    for copy in extra:
        source, _, n = copy.name.rpartition("-dup")
        seen[source] = seen.get(source, 0) + 1
        assert int(n) == seen[source]  # numbered 1, 2, ... per source pod
        assert copy == replace(by_name[source], name=copy.name)  # the same resources
    assert len(set(names(out))) == len(out)


@pytest.mark.parametrize("seed", [42, 43, 44, 45])
def test_tuning_down_removes_pods_until_demand_fits(seed: int) -> None:
    pods = _pods()
    shuffled = names(protocol_workload(pods, 6500, seed=seed, inflate=1.0))
    out = protocol_workload(pods, 4000, seed=seed, inflate=1.0)
    assert 4000 - 1000 < demand(out) <= 4000  # it stops as soon as the demand fits
    kept = names(out)
    assert len(set(kept)) == len(kept) and [n for n in shuffled if n in kept] == kept  # order kept


def test_a_trace_without_gpu_demand_is_not_inflated() -> None:
    cpu_only = [cpu_pod(f"c{i}") for i in range(3)]
    assert sorted(names(protocol_workload(cpu_only, 8000, seed=1))) == ["c0", "c1", "c2"]
    assert protocol_workload([], 8000, seed=1) == []


# ---- trace files ----------------------------------------------------------------------------------------

POD_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n"


def test_load_pods_maps_rows_as_the_artifact_converter_does(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(
        POD_HEADER
        + "p0,12000,16384,1,1000,,LS\n"
        + "p1,6000,12288,1,460,G2|T4,LS\n"
        + "p2,4000,100,1,1500,,BE\n"  # milli clamped to 1000
        + "p3,4000,100,1,0,,BE\n"  # no milli: CPU-only
        + "p4,88000,100,8,1000,,BE\n"
        + "p5,1000,100,0,0,,BE\n"
    )
    pods = load_pods(path)
    assert [(p.name, p.num_gpu, p.gpu_milli) for p in pods] == [
        ("p0", 1, 1000),
        ("p1", 1, 460),
        ("p2", 1, 1000),
        ("p3", 0, 0),
        ("p4", 8, 1000),
        ("p5", 0, 0),
    ]
    assert pods[1].gpu_types == frozenset({"G2", "T4"}) and pods[0].gpu_types == frozenset()
    assert (pods[0].cpu_milli, pods[0].memory_mib) == (12000, 16384)
    gz = tmp_path / "pods.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_pods(gz) == pods


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("p1,lots,100,1,500,,LS", "invalid literal"),
        ("p1,1000", ""),  # a short row
        ("p1,1000,100,2,500,,LS", "takes them whole"),
        ("p1,-5,100,0,0,,LS", "must be >= 0"),
    ],
)
def test_load_pods_names_file_and_line_of_a_bad_row(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(POD_HEADER + "p0,1000,100,1,500,,LS\n" + row + "\n" + "p2,1000,100,1,500,,LS\n")
    with pytest.raises(TraceError, match=rf"pods\.csv: line 3: .*{re.escape(message)}"):
        load_pods(path)


def test_the_line_named_is_the_file_line_even_after_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(POD_HEADER + "p0,1000,100,1,500,,LS\n\n\np1,lots,100,1,500,,LS\n")
    with pytest.raises(TraceError, match=r"pods\.csv: line 5: "):
        load_pods(path)


def test_load_pods_names_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text("name,cpu_milli,memory_mib\np0,1,1\n")
    with pytest.raises(TraceError, match=r"pods\.csv: missing columns \['num_gpu', 'gpu_milli'\]"):
        load_pods(path)


def test_unreadable_trace_files_raise_trace_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=re.escape("nope.csv")):
        load_pods(tmp_path / "nope.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceError, match=re.escape("binary.csv")):
        load_pods(binary)
    fake = tmp_path / "fake.csv.gz"
    fake.write_text("not gzip")
    with pytest.raises(TraceError, match=re.escape("fake.csv.gz")):
        load_nodes(fake)


NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"


def test_load_nodes_builds_one_island_per_node(tmp_path: Path) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text(NODE_HEADER + "n0,64000,262144,2,P100\nn1,96000,786432,8,G2\nn2,32000,1024,0,\n")
    inventory = load_nodes(path)
    assert [(n.name, len(n.gpus), n.gpu_type, n.pool) for n in inventory.nodes] == [
        ("n0", 2, "P100", "openb"),
        ("n1", 8, "G2", "openb"),
        ("n2", 0, "", "openb"),
    ]
    assert {g.island for g in inventory.nodes[1].gpus} == {0}
    assert inventory.gpu_count == 10 and inventory.nodes[1].cpu_milli == 96000


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("n1,64000,262144,two,P100", "node list line 3: ValueError"),
        ("n1,64000", "node list line 3: TypeError"),  # a short row
        ("n0,64000,262144,2,P100", "node 'n0' appears twice"),
    ],
)
def test_load_nodes_names_file_and_line_of_a_bad_row(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text(NODE_HEADER + "n0,64000,262144,2,P100\n" + row + "\n")
    with pytest.raises(TraceError, match=re.escape(f"nodes.csv: {message}")):
        load_nodes(path)


# ---- replay ---------------------------------------------------------------------------------------------


def _result(arrived: Sequence[float], allocated: Sequence[float], capacity: int = 1000) -> ReplayResult:
    n = len(arrived)
    return ReplayResult(
        "test",
        0,
        capacity,
        [],
        [],
        [],
        np.array(arrived, dtype=np.float64),
        np.array(allocated, dtype=np.float64),
        np.full(n, 50.0),
        np.full(n, 200.0),
        np.zeros(n),
    )


def test_curve_bins_by_rounded_arrived_percent_with_a_one_percent_fallback() -> None:
    # arrived 0.4 %, 0.6 %, 1.4 %, 2.5 %, 4.5 %, 99.5 %, 100 %: bins 0, 1, 1, 3, 5, 100, 100
    arrived = [4, 6, 14, 25, 45, 995, 1000]
    allocated = [4, 6, 14, 20, 30, 900, 800]  # unallocated 99.6, 99.4, 98.6, 98, 97, 10, 20
    curve = _result(arrived, allocated).curve("unallocated")
    assert curve == pytest.approx(
        {
            0: 99.6,
            1: (99.4 + 98.6) / 2,
            2: (99.4 + 98.6 + 98) / 3,  # empty: the events of bins 1 and 3
            3: 98,
            4: (98 + 97) / 2,
            5: 97,
            6: 97,
            99: 15,
            100: 15,
            101: 15,
        }
    )


def test_curve_fragmentation_metrics() -> None:
    result = _result([500, 1000], [500, 1000], capacity=1000)
    assert result.curve("frag_rate")[100] == pytest.approx(25.0)  # 50 of 200 idle milli
    assert result.curve("frag_amount")[50] == pytest.approx(5.0)  # 50 of 1000 milli of capacity


def _cluster() -> Inventory:
    return Inventory((node("a", 2, cpu=8000), node("b", 2, cpu=8000), node("c", 1, gpu_type="T4", cpu=4000)))


def _mixed() -> list[Request]:
    """GPU demand of exactly the capacity (5000): the last pod of the trace arrives at 100 %."""
    pods = [share(f"s{i}", m) for i, m in enumerate([300, 500, 200])]
    pods += [
        whole("w0", 1),
        whole("t4", 1, types={"T4"}),
        whole("tp", 2, same_island=True),
        cpu_pod("c0", 2000),
    ]
    return pods


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_replay_records_what_each_event_left_allocated(policy: str) -> None:
    pods = _mixed()
    result = replay(_cluster(), pods, policy, seed=42)
    capacity = 5000
    assert result.capacity_milli == capacity and result.arrived_milli[-1] <= 1.3 * capacity
    assert np.all(np.diff(result.arrived_milli) >= 0)
    placed = np.cumsum([p.request.gpu_demand_milli if p else 0 for p in result.placements])
    assert result.allocated_milli.tolist() == placed.tolist()
    assert np.all(result.idle_milli == capacity - result.allocated_milli)
    # unallocated at 100 % arrived is 100 - the allocated share of the events that arrived at 100 %
    at_100 = result.allocated_milli[result.arrived_milli == capacity]
    assert at_100.size
    assert result.curve("unallocated")[100] == pytest.approx(float(np.mean(100 - 100 * at_100 / capacity)))
    again = replay(_cluster(), pods, policy, seed=42)
    assert again.placements == result.placements


def test_replay_of_whole_gpus_that_fill_the_cluster_leaves_nothing_unallocated() -> None:
    pods = [whole(f"w{i}", 1) for i in range(5)]
    for policy in ("fgd", "bestfit", "utilization"):
        result = replay(_cluster(), pods, policy, seed=1)
        curve = result.curve("unallocated")
        assert curve[100] == 0.0 and curve[20] == 80.0
        assert len(result.pods) == 6 and result.placements[-1] is None  # the 6th (130 %) finds no GPU


def test_each_seed_walks_the_nodes_in_its_own_order() -> None:
    """The artifact renames nodes with a random prefix per seed, so score ties fall differently per seed."""
    inventory = Inventory(tuple(node(f"n{i:02d}", 1) for i in range(40)))
    names = [n.name for n in inventory.nodes]

    def order(seed: int) -> list[str]:
        return [n.name for n in protocol_nodes(inventory, seed=seed).nodes]

    assert sorted(order(42)) == names  # the same nodes, none lost or repeated
    assert order(42) == order(42)
    assert order(42) != order(43)
    assert order(42) != names
