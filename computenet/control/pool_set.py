"""The pool drivers of one control plane, kept in step with the `Pool` resources in the store.

A Pool resource names a place (this machine, a Ray cluster, a Kubernetes cluster) and its region; this
set builds one driver per Pool through a registry keyed by `spec.type`, rebuilds a driver whose spec
changed, and removes the driver of a Pool that was deleted. The Ray and Kubernetes drivers need optional
packages; they are imported only when a Pool of their type exists, and a missing package becomes a
condition on that Pool naming the extra to install, not a failed control plane.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from computenet.api import Pool, PoolSpec, PoolType
from computenet.pools import LocalPool, PoolDriver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverSettings:
    """What every driver of this control plane shares: where it keeps state, and KV-event wiring."""

    state_dir: Path
    kv_events: bool = False


DriverFactory = Callable[[str, PoolSpec, DriverSettings], PoolDriver]


def _local(name: str, spec: PoolSpec, settings: DriverSettings) -> PoolDriver:
    return LocalPool(
        name=name,
        state_dir=settings.state_dir,
        kv_events=settings.kv_events,
        region=spec.region,
        zone=spec.zone,
        gpus=spec.gpus,
    )


def _ray(name: str, spec: PoolSpec, settings: DriverSettings) -> PoolDriver:
    from computenet.pools.ray import RayPool  # needs the `ray` extra: imported only for a ray Pool

    return RayPool(name=name, spec=spec, state_dir=settings.state_dir, kv_events=settings.kv_events)


def _kubernetes(name: str, spec: PoolSpec, settings: DriverSettings) -> PoolDriver:
    from computenet.pools.kubernetes import KubernetesPool  # needs the `kubernetes` extra

    return KubernetesPool(name=name, spec=spec, state_dir=settings.state_dir)


DRIVERS: dict[PoolType, DriverFactory] = {"local": _local, "ray": _ray, "kubernetes": _kubernetes}
EXTRAS: dict[PoolType, str] = {"ray": "ray", "kubernetes": "kubernetes"}
"""The pip extra that brings each driver's packages."""


async def _stop_all(driver: PoolDriver) -> None:
    try:
        for state in await driver.replicas():
            await driver.stop(state.name)
    except Exception:  # an unreachable pool: its replicas are beyond reach, and the Pool is gone anyway
        log.exception("pool %s: could not stop its replicas", driver.name)


class PoolSet(Mapping[str, PoolDriver]):
    """Drivers by pool name. `sync` follows the store; between syncs it is a read-only mapping."""

    def __init__(
        self, settings: DriverSettings | None, drivers: Mapping[PoolType, DriverFactory] | None = None
    ) -> None:
        """With `settings` None the set is fixed: it builds no driver and reports Pools without one."""
        self._settings = settings
        self._factories = dict(drivers or DRIVERS)
        self._drivers: dict[str, PoolDriver] = {}
        self._specs: dict[str, PoolSpec] = {}
        self.problems: dict[str, str] = {}
        """Per Pool: why it has no driver (what to install or fix)."""

    @classmethod
    def of(cls, drivers: Mapping[str, PoolDriver], settings: DriverSettings | None = None) -> PoolSet:
        """A set of drivers made elsewhere (tests); `sync` keeps them."""
        pool_set = cls(settings)
        pool_set._drivers = dict(drivers)
        return pool_set

    def __getitem__(self, name: str) -> PoolDriver:
        return self._drivers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._drivers)

    def __len__(self) -> int:
        return len(self._drivers)

    async def sync(self, pools: Sequence[Pool]) -> None:
        """Build drivers for new Pools, rebuild changed ones, remove those whose Pool is gone.

        A changed Pool's driver is closed and built again: remote replicas are adopted by the new one.
        A deleted Pool's replicas are stopped first, since nothing would ever adopt them; the
        reconciler then places them on the pools that are left. Drivers handed to `of` without a
        Pool of their own stay: they belong to whoever made them.
        """
        wanted = {p.name: p.spec for p in pools}
        for name in [n for n in self._specs if n not in wanted or wanted[n] != self._specs[n]]:
            driver = self._drivers.pop(name)
            del self._specs[name]
            if name not in wanted:
                log.info("pool %s: deleted; stopping its replicas", name)
                await _stop_all(driver)
            else:
                log.info("pool %s: changed; rebuilding its driver", name)
            await driver.close()
        self.problems = {}
        for name, spec in wanted.items():
            if name in self._drivers:
                continue  # built before, or made elsewhere and handed to `of`
            if self._settings is None:
                self.problems[name] = (
                    "this control plane runs a fixed set of pools; it has no driver for this one"
                )
                continue
            try:
                self._drivers[name] = self._factories[spec.type](name, spec, self._settings)
            except ImportError as exc:
                extra, needs = EXTRAS.get(spec.type, spec.type), exc.name or "a package"
                self.problems[name] = f"{spec.type} driver needs {needs}: pip install 'computenet[{extra}]'"
                continue
            except (ValueError, OSError) as exc:
                self.problems[name] = str(exc)
                continue
            self._specs[name] = spec
            log.info("pool %s: %s driver in region %s", name, spec.type, spec.region)

    async def close(self) -> None:
        for name in list(self._drivers):
            await self._drivers.pop(name).close()
        self._specs.clear()
