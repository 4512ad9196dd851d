"""Leader election on a real database (SQLite file and PostgreSQL): the lease's compare-and-swap,
the database's clock, one leader among contenders, handover on release, fencing by time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from computenet.control.election import LeaderElector
from computenet.control.leader import LeaseTimings
from computenet.store import LeaseReading, LeaseStore, ResourceStore

FAST = LeaseTimings(lease_duration_s=1.2, renew_deadline_s=0.7, retry_period_s=0.15)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ResourceStore]:
    opened = await ResourceStore.open(database_url)
    yield opened
    await opened.close()


async def test_of_two_writes_based_on_one_read_exactly_one_wins(store: ResourceStore) -> None:
    assert await store.leases.create("l", "a", 10.0)
    assert not await store.leases.create("l", "b", 10.0)  # created already
    read = (await store.leases.read("l")).lease
    assert read is not None and (read.holder, read.transitions) == ("a", 0)
    assert await store.leases.write("l", "b", 10.0, read_version=read.version)
    assert not await store.leases.write("l", "c", 10.0, read_version=read.version)  # stale read
    now = (await store.leases.read("l")).lease
    assert now is not None and (now.holder, now.transitions, now.version) == ("b", 1, read.version + 1)


async def test_times_are_the_databases_and_renewing_keeps_acquired_at(store: ResourceStore) -> None:
    await store.leases.create("l", "a", 10.0)
    first = await store.leases.read("l")
    assert first.lease is not None
    assert first.now == pytest.approx(time.time(), abs=2.0)  # this machine's database: the same clock
    await asyncio.sleep(0.05)
    assert await store.leases.write("l", "a", 10.0, read_version=first.lease.version)
    renewed = (await store.leases.read("l")).lease
    assert renewed is not None
    assert renewed.renewed_at > first.lease.renewed_at
    assert (renewed.acquired_at, renewed.transitions) == (first.lease.acquired_at, 0)


async def test_release_frees_the_lease_only_for_its_holder(store: ResourceStore) -> None:
    await store.leases.create("l", "a", 10.0)
    assert not await store.leases.release("l", "b")
    assert await store.leases.release("l", "a")
    lease = (await store.leases.read("l")).lease
    assert lease is not None and lease.holder == "" and lease.expires_at < time.time()


async def test_one_of_three_contenders_leads_and_a_release_hands_over_at_once(store: ResourceStore) -> None:
    terms: list[str] = []
    electors = [LeaderElector(store.leases, identity=f"r{i}", timings=FAST) for i in range(3)]
    tasks = {e.identity: asyncio.create_task(e.run(_term(e.identity, terms))) for e in electors}
    try:
        await _until(lambda: any(e.leading for e in electors), 5.0)
        await asyncio.sleep(3 * FAST.retry_period_s)  # the others keep trying meanwhile
        assert sum(e.leading for e in electors) == 1 and len(terms) == 1
        first = terms[0]
        tasks[first].cancel()  # a clean shutdown: step down and release the lease
        await asyncio.wait([tasks[first]])
        stopped_at = time.monotonic()
        await _until(lambda: len(terms) == 2, 5.0)
        # Released, not expired: taken within a retry period or two, not a lease duration.
        assert time.monotonic() - stopped_at < FAST.lease_duration_s
        assert terms[1] != first
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.wait(tasks.values())


async def test_a_leader_cut_off_from_the_database_stops_before_its_lease_expires(
    store: ResourceStore,
) -> None:
    leases = _Severable(store.leases)
    stopped: list[LeaseReading] = []

    async def lead() -> None:
        try:
            await asyncio.Event().wait()
        finally:  # the moment the term is cancelled: what the database says of the lease then
            stopped.append(await store.leases.read("computenet-control"))

    leader = LeaderElector(leases, identity="cut-off", timings=FAST)  # type: ignore[arg-type]
    task = asyncio.create_task(leader.run(lead))
    try:
        await _until(lambda: leader.leading, 5.0)
        leases.cut = True  # every read of the lease now hangs, as on a dead network path
        await _until(lambda: bool(stopped), 5.0)
        (reading,) = stopped
        assert reading.lease is not None and reading.lease.holder == "cut-off"
        assert reading.now < reading.lease.expires_at  # nobody could have taken over yet
        assert not leader.leading
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_a_replica_whose_work_fails_hands_the_lease_to_one_that_can_lead(store: ResourceStore) -> None:
    async def broken() -> None:
        raise RuntimeError("pools could not be built")

    terms: list[str] = []
    failing = LeaderElector(store.leases, identity="failing", timings=FAST)
    working = LeaderElector(store.leases, identity="working", timings=FAST)
    first = asyncio.create_task(failing.run(broken))
    while (await store.leases.read("computenet-control")).lease is None:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(working.run(_term("working", terms)))
    try:
        await _until(lambda: working.leading, 5.0)
        assert terms == ["working"] and not failing.leading
        lease = (await store.leases.read("computenet-control")).lease
        assert lease is not None and lease.transitions == 1  # it was the failing replica's first
    finally:
        for task in (first, second):
            task.cancel()
        await asyncio.wait([first, second])


def _term(name: str, terms: list[str]):  # type: ignore[no-untyped-def]
    async def lead() -> None:
        terms.append(name)
        await asyncio.Event().wait()

    return lead


class _Severable:
    """A LeaseStore whose reads hang once `cut` is set (writes never start without a read)."""

    def __init__(self, inner: LeaseStore) -> None:
        self.inner, self.cut = inner, False

    async def read(self, name: str) -> LeaseReading:
        if self.cut:
            await asyncio.Event().wait()
        return await self.inner.read(name)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def _until(check, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
