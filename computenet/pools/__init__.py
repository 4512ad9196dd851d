"""Pool drivers: the places that run replicas (`local` today; `ray` and `kubernetes` to come)."""

from .base import PoolDriver, ReplicaPhase, ReplicaSpec, ReplicaState
from .local import LocalPool

__all__ = ["LocalPool", "PoolDriver", "ReplicaPhase", "ReplicaSpec", "ReplicaState"]
