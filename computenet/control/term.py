"""The leader's term: what a control-plane replica runs while it holds the lease.

A term clears endpoints the previous leader left for deployments that no longer exist (it
may have died between a delete and the withdrawal), builds the pool drivers from the Pools
in the store, reconciles, and when the term ends (lease lost, shutdown) closes the drivers:
a local pool's replicas stop with it (the next leader starts its own), a Kubernetes pool's
keep running for the next leader to adopt. Its reconciler publishes endpoints into the
store, where every control API replica serves them to the gateways.

Between terms there is no reconciler here: the control API still answers (resources, keys,
usage, endpoints) from the store, but replica facts live with the leader's drivers, so
`replicas`, `nodes` and `logs` answer `NotLeader`, naming the replica to ask.
"""

from __future__ import annotations

import logging
from typing import Any

from computenet.pools import ReplicaState
from computenet.store import ResourceStore

from .pool_set import DriverSettings, PoolSet
from .reconciler import Reconciler

log = logging.getLogger(__name__)


class NotLeader(RuntimeError):
    """Asked for what only the leader knows, on a replica that does not lead."""


class LeaderTerm:
    def __init__(self, store: ResourceStore, drivers: DriverSettings, *, resync_s: float = 5.0) -> None:
        self._store = store
        self._drivers = drivers
        self._resync_s = resync_s
        self._reconciler: Reconciler | None = None

    async def run(self) -> None:
        """One term, until cancelled: the `lead` of `LeaderElector.run`."""
        deployments = await self._store.list("Deployment")
        await self._store.endpoints.retain({d.name for d in deployments})
        pools = PoolSet(self._drivers)  # drivers built from the Pools in the store, on the first pass
        try:
            self._reconciler = Reconciler(self._store, pools, self._store.endpoints, resync_s=self._resync_s)
            await self._reconciler.run()
        finally:
            self._reconciler = None
            names = sorted(pools)
            await pools.close()
            log.info("term ended: closed the drivers of pools %s", names)

    async def replicas(self) -> list[ReplicaState]:
        return await self._leader().replicas()

    def nodes(self) -> list[dict[str, Any]]:
        return self._leader().nodes()

    async def logs(self, replica: str, *, tail_lines: int | None = None) -> str:
        return await self._leader().logs(replica, tail_lines=tail_lines)

    def _leader(self) -> Reconciler:
        if self._reconciler is None:
            raise NotLeader(
                "this control-plane replica does not lead now: replicas and their logs are known to the "
                "leader only; `GET /api/v1/leader` names it"
            )
        return self._reconciler
