"""The leader's term: what a control-plane replica runs while it holds the lease.

A term builds the pool drivers, clears endpoints the previous leader left for deployments
that no longer exist (it may have died between a delete and the withdrawal), reconciles,
and when the term ends (lease lost, shutdown) closes the drivers, so that no replica it
started outlives its leadership. Its reconciler publishes endpoints into the store, where
every control API replica serves them to the gateways.

Between terms there is no reconciler here: the control API still answers (resources, keys,
usage, endpoints) from the store, but replica facts live with the leader's drivers, so
`replicas` and `logs` answer `NotLeader`, naming the replica to ask.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from computenet.api import Pool
from computenet.pools import LocalPool, PoolDriver, ReplicaState
from computenet.store import ResourceStore

from .reconciler import Reconciler

log = logging.getLogger(__name__)

PoolBuilder = Callable[[], Awaitable[Mapping[str, PoolDriver]]]


class NotLeader(RuntimeError):
    """Asked for what only the leader knows, on a replica that does not lead."""


class LeaderTerm:
    def __init__(self, store: ResourceStore, build_pools: PoolBuilder, *, resync_s: float = 5.0) -> None:
        self._store = store
        self._build_pools = build_pools
        self._resync_s = resync_s
        self._reconciler: Reconciler | None = None

    async def run(self) -> None:
        """One term, until cancelled: the `lead` of `LeaderElector.run`."""
        deployments = await self._store.list("Deployment")
        await self._store.endpoints.retain({d.name for d in deployments})
        pools = await self._build_pools()
        try:
            self._reconciler = Reconciler(self._store, pools, self._store.endpoints, resync_s=self._resync_s)
            await self._reconciler.run()
        finally:
            self._reconciler = None
            for driver in pools.values():
                await driver.close()
            log.info("term ended: stopped the replicas of pools %s", sorted(pools))

    async def replicas(self) -> list[ReplicaState]:
        return await self._leader().replicas()

    async def logs(self, replica: str, *, tail_lines: int | None = None) -> str:
        return await self._leader().logs(replica, tail_lines=tail_lines)

    def _leader(self) -> Reconciler:
        if self._reconciler is None:
            raise NotLeader(
                "this control-plane replica does not lead now: replicas and their logs are known to the "
                "leader only; `GET /api/v1/leader` names it"
            )
        return self._reconciler


def local_pools(store: ResourceStore, state_dir: Path) -> PoolBuilder:
    """Drivers for the `local` Pools in the store, read once per term.

    TODO(merge): replace with `computenet.control.pool_set.PoolSet`, which builds every pool
    type and follows Pool changes during a term; this stand-in skips ray and kubernetes pools.
    """

    async def build() -> Mapping[str, PoolDriver]:
        drivers: dict[str, PoolDriver] = {}
        for pool in await store.list("Pool"):
            if not isinstance(pool, Pool):
                continue
            if pool.spec.type != "local":
                kind = pool.spec.type
                log.warning("pool %s: %s pools are not driven by `computenet control` yet", pool.name, kind)
                continue
            spec = pool.spec
            drivers[pool.name] = LocalPool(
                name=pool.name, state_dir=state_dir, region=spec.region, zone=spec.zone, gpus=spec.gpus
            )
        return drivers

    return build
