"""Pool drivers: the places that run replicas.

`local` is imported here; `ray` and `kubernetes` are subpackages that need their extras and are
imported only by the pool set, for a Pool of their type.
"""

from .base import PoolDriver, ReplicaPhase, ReplicaSpec, ReplicaState
from .local import LocalPool

__all__ = ["LocalPool", "PoolDriver", "ReplicaPhase", "ReplicaSpec", "ReplicaState"]
