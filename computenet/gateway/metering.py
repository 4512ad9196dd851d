"""Usage metering off the request path: records queue in memory, one background task writes them in batches.

Why this shape: a request must never wait for the store, so `record()` is a deque append. The flusher
writes a batch when `batch_size` records are pending or `flush_interval_s` has passed; a batch the sink
refused is kept (in order) and retried with jittered exponential backoff while new records keep queuing.
Memory is bounded: past `max_pending` the oldest records go to a JSON-lines spill file (or are dropped and
counted when there is none). The spill file is replayed to the sink once it accepts writes again, and on
the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from computenet.api.usage import UsageRecord, UsageSink

log = logging.getLogger(__name__)

_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRecord))
_LOSS_LOG_INTERVAL_S = 10.0
_CLOSE_ATTEMPTS = 3


def _encode(rec: UsageRecord) -> str:
    return json.dumps({name: getattr(rec, name) for name in _FIELDS}, separators=(",", ":")) + "\n"


def _decode(line: bytes) -> UsageRecord | None:
    try:
        return UsageRecord(**json.loads(line))
    except (ValueError, TypeError) as exc:  # a torn last line after a crash, or a file of another version
        log.warning("skipping an unreadable line of the usage spill file: %s", exc)
        return None


class _SpillFile:
    """Overflow storage in JSON lines. Spills append to `path`; a replay first renames it to
    `<path>.replaying`, so spills made during the replay land in a fresh file, and reads that from a
    byte offset that advances only once a batch was written. A crash mid-replay re-sends that file's
    prefix on the next start (the sink is idempotent on request_id); a clean close moves the unread
    tail back into `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replaying = path.with_name(path.name + ".replaying")
        self.offset = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.backlog = self._nonempty(path) or self._nonempty(self.replaying)

    @staticmethod
    def _nonempty(path: Path) -> bool:
        try:
            return path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, records: Iterable[UsageRecord]) -> None:
        text = "".join(map(_encode, records))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
        self.backlog = True

    def read_batch(self, n: int) -> tuple[list[UsageRecord], int]:
        """Up to `n` records not yet written, and the offset to `commit` once they are."""
        while True:
            if not self.replaying.exists():
                if not self._nonempty(self.path):
                    self.backlog = False
                    return [], 0
                os.replace(self.path, self.replaying)
                self.offset = 0
            records: list[UsageRecord] = []
            end = self.offset
            with self.replaying.open("rb") as f:
                f.seek(self.offset)
                while len(records) < n and (line := f.readline()):
                    end += len(line)
                    if (rec := _decode(line)) is not None:
                        records.append(rec)
            if records:
                return records, end
            self.replaying.unlink()  # fully written
            self.offset = 0

    def commit(self, end: int) -> None:
        self.offset = end

    def hand_back(self) -> None:
        """At close: the unread tail of a replay goes back into `path` for the next start."""
        if not self.replaying.exists():
            return
        with self.replaying.open("rb") as src:
            src.seek(self.offset)
            tail = src.read()
        if tail:
            with self.path.open("ab") as dst:
                dst.write(tail if tail.endswith(b"\n") else tail + b"\n")
        self.replaying.unlink()
        self.offset = 0


class UsageMeter:
    def __init__(
        self,
        sink: UsageSink,
        *,
        batch_size: int = 512,
        flush_interval_s: float = 1.0,
        max_pending: int = 200_000,
        spill_path: Path | None = None,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        close_timeout_s: float = 10.0,
    ) -> None:
        if batch_size < 1 or max_pending < batch_size:
            raise ValueError(f"need 1 <= batch_size <= max_pending; got {batch_size} and {max_pending}")
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be positive; got {flush_interval_s}")
        self._sink = sink
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending
        self._trim_slack = max(0, min(batch_size, max_pending // 16) - 1)
        self._spill = _SpillFile(spill_path) if spill_path is not None else None
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._close_timeout_s = close_timeout_s
        self._queue: deque[UsageRecord] = deque()
        self._batch: list[UsageRecord] = []  # taken for writing (retried until written); older than _queue
        self._batch_replay_end: int | None = None  # the spill-file offset when _batch came from a replay
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing = False  # the flusher is inside sink.write_usage()
        self._closed = False
        self._unlogged_loss = 0
        self._loss_logged_at = -_LOSS_LOG_INTERVAL_S
        self.written_total = 0
        self.replayed_total = 0  # of written_total, records that came back from the spill file
        self.failed_batches_total = 0  # failed sink writes (each retry of a batch counts)
        self.spilled_total = 0
        self.dropped_total = 0

    @property
    def pending(self) -> int:
        """Records held in memory, not yet written."""
        return len(self._queue) + len(self._batch)

    def record(self, rec: UsageRecord) -> None:
        """Queue one record; O(1), never awaits, never raises."""
        if self._closed:
            self._note_loss(1, "arrived after close()")
            return
        queue = self._queue
        queue.append(rec)
        if len(queue) >= self._batch_size:
            self._wake.set()
        if len(queue) + len(self._batch) > self._max_pending:
            self._overflow()

    async def start(self) -> None:
        """Start the flusher. It replays a spill file left by an earlier run whenever the queue is idle."""
        if self._task is not None or self._closed:
            raise RuntimeError("UsageMeter.start() may be called once, before close()")
        self._task = asyncio.create_task(self._run(), name="usage-meter-flusher")

    async def close(self) -> None:
        """Stop the flusher and write everything pending (a few tries, within close_timeout_s); what the
        sink still refuses goes to the spill file for the next start, or is dropped and counted."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout_s
        if self._task is not None:
            await self._stop_flusher(deadline)
        while self._batch or self._take_from_queue():
            if not await self._write_for_close(deadline):
                break
        self._spill_leftovers_at_close()

    # -- the flusher ---------------------------------------------------------------------------------

    async def _stop_flusher(self, deadline: float) -> None:
        """A write in progress may finish (the flusher exits after it), so that a store client is not
        cancelled mid-transaction; a flusher that waits or backs off is cancelled at once."""
        assert self._task is not None
        if self._writing:
            remaining_s = deadline - asyncio.get_running_loop().time()
            await asyncio.wait([self._task], timeout=max(0.0, remaining_s))
        self._task.cancel()
        await asyncio.wait([self._task])

    async def _run(self) -> None:
        try:
            await self._flush_forever()
        except Exception:  # a task boundary: say so loudly; close() still writes or spills what is queued
            log.exception("the usage meter's flusher stopped; records will queue until close()")

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_interval_s
        failures = 0
        while not self._closed:
            if not self._batch:
                now = loop.time()
                if len(self._queue) >= self._batch_size:
                    self._take_from_queue()
                elif self._queue and now >= deadline:
                    self._take_from_queue()
                    deadline = now + self._flush_interval_s
                elif not self._take_from_spill():
                    if now >= deadline:
                        deadline = now + self._flush_interval_s
                    await self._sleep_until(deadline)
                    continue
            if await self._write_batch():
                failures = 0
            elif not self._closed:
                failures += 1
                await asyncio.sleep(self._backoff_s(failures))

    async def _sleep_until(self, deadline: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._wake.wait()

    def _take_from_queue(self) -> bool:
        queue = self._queue
        self._batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        self._batch_replay_end = None
        return bool(self._batch)

    def _take_from_spill(self) -> bool:
        if self._spill is None or not self._spill.backlog:
            return False
        try:
            self._batch, end = self._spill.read_batch(self._batch_size)
        except OSError as exc:
            log.error("cannot read the usage spill file %s; will retry later: %s", self._spill.path, exc)
            self._spill.backlog = False  # until the next spill sets it again
            return False
        self._batch_replay_end = end
        return bool(self._batch)

    async def _write_batch(self) -> bool:
        """Write `_batch`; on success forget it, on failure keep it for the next try."""
        batch = self._batch
        self._writing = True
        try:
            await self._sink.write_usage(batch)
        except Exception as exc:  # the sink's failure is ours to retry, whatever it is
            self.failed_batches_total += 1
            log.warning("usage sink failed to write %d records; will retry: %r", len(batch), exc)
            return False
        finally:
            self._writing = False
        self.written_total += len(batch)
        if self._batch_replay_end is not None and self._spill is not None:
            self.replayed_total += len(batch)
            self._spill.commit(self._batch_replay_end)
        self._batch = []
        self._batch_replay_end = None
        return True

    def _backoff_s(self, failures: int) -> float:
        ceiling = min(self._retry_max_s, self._retry_initial_s * 2.0 ** min(failures - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

    async def _write_for_close(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        for attempt in range(1, _CLOSE_ATTEMPTS + 1):
            try:
                async with asyncio.timeout_at(deadline):
                    if await self._write_batch():
                        return True
                    if attempt < _CLOSE_ATTEMPTS:
                        await asyncio.sleep(min(self._backoff_s(attempt), max(0.0, deadline - loop.time())))
            except TimeoutError:
                log.warning("usage sink did not finish writing before close_timeout_s")
                return False
        return False

    # -- bounded memory --------------------------------------------------------------------------------

    def _overflow(self) -> None:
        """Move the oldest queued records out of memory, a chunk at a time so that this runs rarely."""
        queue = self._queue
        n = min(len(queue), len(queue) + len(self._batch) - self._max_pending + self._trim_slack)
        oldest = [queue.popleft() for _ in range(n)]
        self._spill_or_drop(oldest, "the sink is behind and max_pending was reached")

    def _spill_or_drop(self, records: list[UsageRecord], why: str) -> None:
        if not records:
            return
        if self._spill is not None:
            try:
                self._spill.append(records)
            except Exception as exc:  # never raise into a request: count the loss instead
                log.error("cannot append to the usage spill file %s: %r", self._spill.path, exc)
            else:
                self.spilled_total += len(records)
                return
        self._note_loss(len(records), why)

    def _spill_leftovers_at_close(self) -> None:
        leftovers = [] if self._batch_replay_end is not None else self._batch  # a replay batch stays on disk
        leftovers.extend(self._queue)
        self._batch, self._batch_replay_end = [], None
        self._queue.clear()
        self._spill_or_drop(leftovers, "the sink failed during close()")
        if self._spill is not None:
            try:
                self._spill.hand_back()
            except OSError as exc:
                log.error("cannot move the unread usage replay file back to %s: %s", self._spill.path, exc)

    def _note_loss(self, n: int, why: str) -> None:
        """Count dropped records; log at most once per interval so a dead sink does not flood the log."""
        self.dropped_total += n
        self._unlogged_loss += n
        now = time.monotonic()
        if now - self._loss_logged_at >= _LOSS_LOG_INTERVAL_S:
            hint = "; set spill_path to keep them" if self._spill is None else ""
            log.error(
                "dropped %d usage records (%s; %d dropped in all)%s",
                self._unlogged_loss,
                why,
                self.dropped_total,
                hint,
            )
            self._unlogged_loss = 0
            self._loss_logged_at = now
