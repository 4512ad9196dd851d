"""Leader election, the loop: keep reading and writing the lease, run the leader's work only while it holds.

`LeaderElector.run(lead)` takes part until cancelled. While this replica holds the lease
it runs `lead()` (the reconciler, in `computenet control`) as a task; when a renewal
shows someone else took the lease, or no renewal succeeded within the renew deadline,
it cancels that task at once. On a clean shutdown it releases the lease, so a follower
takes over within one retry period instead of a whole lease duration. The decisions are
in `leader.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from enum import Enum

from computenet.store import LeaseStore

from .leader import LeaseTimings, Move, attempt_timeout, leads_until, next_move

log = logging.getLogger(__name__)

CONTROL_LEASE = "computenet-control"


def default_identity() -> str:
    """hostname-pid-random: a restarted process never mistakes its predecessor's lease for its own."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Outcome(Enum):
    HELD = "held"  # created, taken or renewed: ours for another term
    FOLLOWING = "following"  # someone else holds it
    FAILED = "failed"  # the database did not answer in time, or failed


class LeaderElector:
    def __init__(
        self,
        leases: LeaseStore,
        *,
        identity: str,
        name: str = CONTROL_LEASE,
        timings: LeaseTimings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.name = name
        self.timings = timings or LeaseTimings()
        self._leases = leases
        self._clock = clock
        self._deadline: float | None = None  # while leading: when this term ends unless renewed
        self._term: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self._term is not None and not self._term.done()

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Elect until cancelled, running `lead()` while this replica leads."""
        try:
            while True:
                await self._round(lead)
        finally:
            await self._step_down("shutting down")
            await self._release()

    async def _round(self, lead: Callable[[], Awaitable[None]]) -> None:
        if self._term is not None and self._term.done():
            await self._term_ended()
            await asyncio.sleep(self.timings.lease_duration_s)  # sit one out: another replica may do better
            return
        sent = self._clock()
        outcome = await self._attempt(attempt_timeout(sent, self._deadline, self.timings))
        if outcome is Outcome.HELD:
            self._deadline = leads_until(sent, self.timings)
            if self._term is None:
                log.info("leader election: %s leads (lease %s)", self.identity, self.name)
                self._term = asyncio.create_task(_run_term(lead), name="leader-term")
        elif outcome is Outcome.FOLLOWING:
            await self._step_down("another replica holds the lease")
        await self._sleep_until_next()
        if self._deadline is not None and self._clock() >= self._deadline:
            await self._step_down(f"no renewal succeeded within {self.timings.renew_deadline_s:g}s")

    async def _attempt(self, timeout_s: float) -> Outcome:
        try:
            return await asyncio.wait_for(self._read_and_write(), timeout_s)
        except TimeoutError:
            log.warning("leader election: the database did not answer within %.1fs", timeout_s)
        except Exception as exc:  # the database is away or failing over: retried next round
            log.warning("leader election: %s", exc)
        return Outcome.FAILED

    async def _read_and_write(self) -> Outcome:
        reading = await self._leases.read(self.name)
        move = next_move(reading.lease, self.identity, reading.now)
        duration = self.timings.lease_duration_s
        if move is Move.FOLLOW:
            return Outcome.FOLLOWING
        if move is Move.CREATE:
            won = await self._leases.create(self.name, self.identity, duration)
        else:
            assert reading.lease is not None
            version = reading.lease.version
            won = await self._leases.write(self.name, self.identity, duration, read_version=version)
        # A lost compare-and-swap means another replica wrote the lease since we read it: it holds it.
        return Outcome.HELD if won else Outcome.FOLLOWING

    async def _sleep_until_next(self) -> None:
        pause = self.timings.retry_period_s
        if self._deadline is not None:
            pause = max(0.0, min(pause, self._deadline - self._clock()))
        await asyncio.sleep(pause)

    async def _term_ended(self) -> None:
        """`lead()` returned or failed on its own: give the lease up so that another replica may try."""
        assert self._term is not None
        term, self._term, self._deadline = self._term, None, None
        if not term.cancelled() and term.exception() is not None:
            failure = term.exception()
            log.error("leader election: the leader's work failed; releasing the lease", exc_info=failure)
        await self._release()

    async def _step_down(self, why: str) -> None:
        term, self._term, self._deadline = self._term, None, None
        if term is None:
            return
        if not term.done():
            log.warning("leader election: %s stops leading: %s", self.identity, why)
        term.cancel()
        await asyncio.wait([term])

    async def _release(self) -> None:
        try:
            release = self._leases.release(self.name, self.identity)
            await asyncio.wait_for(release, self.timings.retry_period_s)
        except Exception as exc:  # it expires by itself; releasing only saves the follower the wait
            log.warning("leader election: could not release the lease: %s", exc)


async def _run_term(lead: Callable[[], Awaitable[None]]) -> None:
    await lead()
