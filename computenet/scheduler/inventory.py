"""What the scheduler places onto: pools -> nodes -> GPUs.

These are plain, immutable descriptions. A pool driver reports one `PoolInventory` per pool; the trace
evaluator builds the same objects from Alibaba's node list, so placement code never knows which of the
two it runs on. The mutable, array-shaped view that placement works on is `ClusterState` (state.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

MILLI_PER_GPU = 1000
"""A GPU's compute is 1000 milli, as in Kubernetes GPU-sharing schedulers (HAMi, Open-GPU-Share)."""

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"


class InventoryError(ValueError):
    """An inventory that cannot be scheduled onto; the message names the node and the field."""


@dataclass(frozen=True)
class Gpu:
    index: int
    type: str
    memory_mib: int = 0
    island: int = 0
    """NVLink island: GPUs with the same id talk over NVLink; tensor-parallel replicas stay inside one."""
    healthy: bool = True


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Node:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: tuple[Gpu, ...] = ()
    pool: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    price_per_gpu_hour: float = 0.0
    taints: tuple[Taint, ...] = ()
    healthy: bool = True

    @property
    def gpu_type(self) -> str:
        """The node's GPU model ('' for a CPU-only node); a node's GPUs are all one model."""
        return self.gpus[0].type if self.gpus else ""

    @property
    def region(self) -> str:
        return self.labels.get(REGION_LABEL, "")

    @property
    def zone(self) -> str:
        return self.labels.get(ZONE_LABEL, "")


@dataclass(frozen=True)
class PoolInventory:
    """What one pool reports: its place in the world and its nodes."""

    name: str
    nodes: tuple[Node, ...]
    region: str = ""
    zone: str = ""


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for node in self.nodes:
            _check_node(node)
            if node.name in seen:
                raise InventoryError(f"node {node.name!r} appears twice; node names must be unique")
            seen.add(node.name)

    @classmethod
    def from_pools(cls, pools: Iterable[PoolInventory]) -> Inventory:
        """Nodes of every pool, labelled with their pool's region and zone unless they carry their own."""
        nodes: list[Node] = []
        for pool in pools:
            for node in pool.nodes:
                labels = {REGION_LABEL: pool.region, ZONE_LABEL: pool.zone} | dict(node.labels)
                nodes.append(replace(node, pool=pool.name, labels=labels))
        return cls(tuple(nodes))

    @property
    def gpu_count(self) -> int:
        return sum(len(node.gpus) for node in self.nodes)


def _check_node(node: Node) -> None:
    if node.cpu_milli < 0 or node.memory_mib < 0:
        raise InventoryError(f"node {node.name!r}: cpu_milli and memory_mib must be >= 0")
    types = {gpu.type for gpu in node.gpus}
    if len(types) > 1:
        raise InventoryError(
            f"node {node.name!r} mixes GPU models {sorted(types)}; report one node per model"
        )
    indices = [gpu.index for gpu in node.gpus]
    if indices != list(range(len(indices))):
        raise InventoryError(f"node {node.name!r}: GPU indices must be 0..{len(indices) - 1}, got {indices}")


def trace_nodes(rows: Sequence[Mapping[str, str]], *, pool: str = "openb") -> Inventory:
    """The inventory of an Alibaba `openb_node_list_*.csv` (columns sn, cpu_milli, memory_mib, gpu, model).

    The trace discloses neither GPU memory nor NVLink wiring; every GPU of a node is put in one island.
    """
    nodes = []
    for line, row in enumerate(rows, start=2):
        try:
            count = int(row["gpu"])
            model = row.get("model") or ""
            gpus = tuple(Gpu(index=i, type=model) for i in range(count))
            nodes.append(
                Node(
                    name=row["sn"],
                    cpu_milli=int(row["cpu_milli"]),
                    memory_mib=int(row["memory_mib"]),
                    gpus=gpus,
                    pool=pool,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:  # TypeError: a short row
            raise InventoryError(
                f"node list line {line}: {exc!r}; expected sn,cpu_milli,memory_mib,gpu,model"
            ) from None
    return Inventory(tuple(nodes))
