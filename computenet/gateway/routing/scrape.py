"""The engine-metrics scraper: every replica's /metrics, read into the signal board.

Routing on queue depth and KV-cache usage is only as good as their age, so each
replica is scraped about ten times a second. That rate shapes the design:

* one ticker task starts the scrapes of all replicas at once, each in a short
  task of its own, so a replica that answers slowly (or not at all, until its
  `timeout_s`) delays nobody else; a replica whose last scrape is still running
  is skipped rather than scraped twice;
* requests go through the gateway's own HTTP client with one keep-alive
  connection per replica, and the adapters read only the series they route on,
  so a scrape costs a fraction of a millisecond of CPU (16 sims at 10 Hz take
  about 4% of one core);
* a failed scrape counts as an error on the board and is logged once when the
  replica starts failing and once when it recovers, not ten times a second.

How old a scrape may be before routing ignores it is the board's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from computenet.engines import ENGINES, EngineAdapter
from computenet.engines.metrics import MetricsParseError

from ..upstream import Origin, UpstreamError, UpstreamPool, UpstreamResponse
from .signals import SignalBoard

log = logging.getLogger(__name__)

_ACCEPT = ((b"Accept", b"text/plain"),)  # the classic text format, not OpenMetrics
MAX_BODY_BYTES = 16 * 1024 * 1024  # a vLLM /metrics is ~100 KB; more is a broken or wrong endpoint


class ScrapeFailed(Exception):
    """A replica answered its metrics request with something other than metrics."""


@dataclass(eq=False, slots=True)
class _Target:
    """One tracked replica: where its metrics are, how to read them, and its scrape state."""

    replica: str
    base_url: str
    adapter: EngineAdapter
    origin: Origin
    pool: UpstreamPool  # one per replica, so untracking it closes exactly its connections
    task: asyncio.Task[None] | None = None  # the scrape in flight, or the last one
    failing: bool = False  # whether the last scrape failed: logs only on a change


class EngineScraper:
    """Scrapes tracked replicas every `interval_s` into `board` (see the module docstring)."""

    def __init__(self, board: SignalBoard, *, interval_s: float = 0.1, timeout_s: float = 1.0) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError(f"interval_s and timeout_s must be positive, got {interval_s}, {timeout_s}")
        self._board = board
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._targets: dict[str, _Target] = {}
        self._retired: list[_Target] = []  # untracked, connections still to close
        self._ticker: asyncio.Task[None] | None = None

    def track(self, replica: str, base_url: str, engine: str) -> None:
        """Scrape `replica` at `base_url` (without /v1) with the adapter of `engine` from now on.

        Tracking a replica again with the same address and engine changes nothing;
        with another, it replaces the old one.
        """
        adapter = ENGINES.get(engine)
        if adapter is None:
            known = ", ".join(sorted(ENGINES))
            raise ValueError(f"replica {replica!r}: unknown engine {engine!r}; known engines: {known}")
        current = self._targets.get(replica)
        if current is not None and current.base_url == base_url and current.adapter is adapter:
            return
        origin = Origin.parse(base_url)
        self.untrack(replica)
        pool = UpstreamPool(connect_timeout_s=self._timeout_s, read_timeout_s=self._timeout_s)
        self._targets[replica] = _Target(replica, base_url, adapter, origin, pool)

    def untrack(self, replica: str) -> None:
        """Stop scraping `replica`: its scrape in flight is cancelled, its connection closed soon after."""
        target = self._targets.pop(replica, None)
        if target is None:
            return
        if target.task is not None:
            target.task.cancel()
        self._retired.append(target)

    def tracked(self) -> set[str]:
        return set(self._targets)

    @property
    def board(self) -> SignalBoard:
        """Where the scrapes go (and their errors are counted)."""
        return self._board

    async def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._run(), name="engine-scraper")

    async def close(self) -> None:
        """Stop scraping and close every connection; `start()` again resumes with the same replicas."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for target in self._targets.values():
            if target.task is not None:
                target.task.cancel()
        await self._release([*self._retired, *self._targets.values()])
        self._retired.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            for target in self._targets.values():
                if target.task is None or target.task.done():
                    target.task = asyncio.create_task(self._scrape(target), name=f"scrape {target.replica}")
            if self._retired:
                await self._close_retired()
            # Keep to the schedule, but after a stall (a busy loop) start afresh rather than catch up.
            due = max(due + self._interval_s, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _scrape(self, target: _Target) -> None:
        """One scrape of one replica, recorded on the board either way; never raises but to cancel."""
        try:
            async with asyncio.timeout(self._timeout_s):
                text = await self._fetch(target)
            load = target.adapter.parse_metrics(text)
        except Exception as exc:  # a task boundary: whatever went wrong, the replica failed a scrape
            self._board.record_scrape_error(target.replica)
            if not target.failing:
                target.failing = True
                self._log_failure(target, exc)
            return
        self._board.record_scrape(target.replica, load)
        if target.failing:
            target.failing = False
            log.info("metrics of replica %s at %s are answering again", target.replica, target.base_url)

    async def _fetch(self, target: _Target) -> str:
        path = target.adapter.metrics_path.encode()
        response = await target.pool.request(target.origin, b"GET", path, b"", _ACCEPT)
        try:
            body = await _read_body(response)
        except BaseException:
            response.close()  # not read to its end: the connection cannot carry another request
            raise
        response.release()
        if response.status != 200:
            raise ScrapeFailed(f"HTTP {response.status}: {body[:200].decode('utf-8', 'replace')!r}")
        return body.decode("utf-8", "replace")

    def _log_failure(self, target: _Target, exc: Exception) -> None:
        where = f"metrics of replica {target.replica} at {target.base_url}{target.adapter.metrics_path}"
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self._timeout_s:g} s"
        elif isinstance(exc, (UpstreamError, ScrapeFailed, MetricsParseError)):
            reason = str(exc)
        else:
            log.error("%s: scrape failed unexpectedly", where, exc_info=exc)
            return
        log.warning("%s: %s; its engine figures go stale until it answers", where, reason)

    async def _close_retired(self) -> None:
        """Close the connections of untracked replicas whose cancelled scrape has unwound."""
        unwinding = []
        for target in self._retired:
            if target.task is None or target.task.done():
                await target.pool.close()
            else:
                unwinding.append(target)
        self._retired = unwinding

    async def _release(self, targets: list[_Target]) -> None:
        """Wait for the cancelled scrapes of `targets` to unwind, then close their connections."""
        tasks = [t.task for t in targets if t.task is not None and not t.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for target in targets:
            await target.pool.close()


async def _read_body(response: UpstreamResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while (chunk := await response.next_chunk()) is not None:
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ScrapeFailed(f"metrics larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
