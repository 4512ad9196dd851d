"""What one replica (or one trace pod) asks of the cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .inventory import MILLI_PER_GPU

SpreadKey = Literal["node", "zone", "region"]


class RequestError(ValueError):
    """A request no node could ever satisfy as written; the message names the field and the fix."""


@dataclass(frozen=True)
class Spread:
    """Replicas of one deployment spread over `key` so that no domain has more than `max_skew` extra."""

    key: SpreadKey = "node"
    max_skew: int = 1


@dataclass(frozen=True)
class Toleration:
    key: str
    value: str | None = None
    """None tolerates every value of the key (Kubernetes' `operator: Exists`)."""


@dataclass(frozen=True)
class Request:
    """One placement unit.

    GPU requests come in two shapes, as in the trace and in HAMi:
    * whole GPUs: `num_gpu` >= 1 with `gpu_milli` = 1000. `gpu_memory_mib` is then the least memory each
      GPU must have, and `same_island` keeps a tensor-parallel replica inside one NVLink island;
    * a share of one GPU: `num_gpu` = 1 with `gpu_milli` < 1000; `gpu_memory_mib` is carved out of that
      GPU's free memory.
    """

    name: str
    cpu_milli: int = 0
    memory_mib: int = 0
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_memory_mib: int = 0
    gpu_types: frozenset[str] = frozenset()
    """Allowed GPU models; empty allows any."""
    same_island: bool = False
    tolerations: tuple[Toleration, ...] = ()
    priority: int = 0
    tenant: str = ""
    deployment: str = ""
    """Replicas of one deployment are counted together by `spread`."""
    spread: Spread | None = None
    pools: frozenset[str] = field(default_factory=frozenset)
    """Allowed pools; empty allows any."""

    def __post_init__(self) -> None:
        if self.num_gpu < 0:
            raise RequestError(f"{self.name}: num_gpu must be >= 0, got {self.num_gpu}")
        if self.num_gpu == 0 and self.gpu_milli:
            raise RequestError(f"{self.name}: gpu_milli={self.gpu_milli} needs num_gpu >= 1")
        if self.num_gpu and not 0 < self.gpu_milli <= MILLI_PER_GPU:
            raise RequestError(f"{self.name}: gpu_milli must be in 1..1000 per GPU, got {self.gpu_milli}")
        if self.num_gpu > 1 and self.gpu_milli != MILLI_PER_GPU:
            raise RequestError(
                f"{self.name}: a request for {self.num_gpu} GPUs takes them whole; set gpu_milli=1000"
            )
        if min(self.cpu_milli, self.memory_mib, self.gpu_memory_mib) < 0:
            raise RequestError(f"{self.name}: cpu_milli, memory_mib and gpu_memory_mib must be >= 0")
        if self.spread is not None and self.spread.max_skew < 1:
            raise RequestError(f"{self.name}: spread.max_skew must be >= 1, got {self.spread.max_skew}")

    @property
    def is_share(self) -> bool:
        """A fraction of one GPU."""
        return self.num_gpu == 1 and self.gpu_milli < MILLI_PER_GPU

    @property
    def gpu_demand_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def shape(self) -> tuple[int, int, int, int, frozenset[str]]:
        """What scorers' caches key on: requests with one shape score alike on a node."""
        return (self.cpu_milli, self.gpu_milli, self.num_gpu, self.gpu_memory_mib, self.gpu_types)


@dataclass(frozen=True)
class Placement:
    """Where a request went: a node, and per GPU index the milli taken there."""

    request: Request
    node: int
    gpus: tuple[int, ...] = ()
