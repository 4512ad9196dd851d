"""Keeps a `KVBlockIndex` current from each replica's KV-event stream (vLLM's ZMQ wire format).

One SUB socket per replica receives `[topic, seq, payload]` messages: seq an
8-byte big-endian counter, payload msgpack of vLLM's `KVEventBatch`
(`[ts, [event, ...], data_parallel_rank]`). The index must never claim a block
the replica no longer holds, so the sequence numbers are watched:

* a gap (seq past last + 1) means batches were lost, possibly evictions. With
  a replay endpoint (vLLM's ROUTER socket: send the 8-byte start seq, receive
  `[seq, payload]` until an empty payload) the missing batches are fetched and
  applied first. Without one, or when the replay fails or no longer reaches
  back far enough, the replica's entries are dropped and the stream is followed
  from the new seq: a cold replica costs a missed hit, a stale one a wrong route;
* seq going back (the engine restarted, its cache is empty) drops them too;
* a batch that cannot be decoded is counted and skipped, and since its events
  are lost the replica's entries are dropped as for a gap.

A SUB socket misses whatever was published before it connected (ZMQ's "slow
joiner"), so with a replay endpoint the subscriber first replays the
publisher's whole buffer, and a replica's index starts complete. Batches the
SUB socket queued meanwhile arrive again afterwards; they are recognised as
duplicates while the live stream catches up with the replay. A publisher that
restarts and outruns the old sequence number while the socket is disconnected
looks like a gap, not a restart; the registry forgetting the old replica
covers that case.

pyzmq and msgpack are imported here only (the `kv-events` extra), so a gateway
without KV-aware routing needs neither.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from .kv_index import KVBlockIndex
from .rekey import EngineKeys

log = logging.getLogger(__name__)

REPLAY_TIMEOUT_S = 1.0  # longest wait for each reply of a replay before giving up on it
RECV_HWM = 100_000  # batches the SUB socket queues while a replay runs (vLLM's PUB high-water mark)
SEQ_BYTES = 8


@dataclass(slots=True)
class KVEventStats:
    """How a replica's stream has gone (or, summed, every replica's), for the gateway's Prometheus metrics."""

    batches: int = 0  # batches applied to the index, live or replayed
    events: int = 0  # events in those batches
    gaps: int = 0  # times a replica's sequence skipped ahead
    replays: int = 0  # replay requests answered to the end (the start-up one included)
    replay_failures: int = 0  # replays that timed out or no longer reached back far enough
    resets: int = 0  # times a replica's entries were dropped: lost events, restart, unreadable batch
    decode_errors: int = 0  # messages or batches that could not be read
    unkeyed_blocks: int = 0  # stored blocks a re-keyed replica's events could not key (see rekey.py)

    def __add__(self, other: KVEventStats) -> KVEventStats:
        return KVEventStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(slots=True)
class _Feed:
    """One replica's stream and how far the index has followed it."""

    replica: str
    endpoint: str
    replay_endpoint: str | None
    socket: zmq.asyncio.Socket
    applied: int = -1  # seq of the last batch applied; -1 none since the last reset
    last_live: int = -1  # seq of the last message the SUB socket delivered
    catching_up: bool = False  # a replay ran ahead of the live stream: its batches come again
    task: asyncio.Task[None] | None = None
    stats: KVEventStats = field(default_factory=KVEventStats)
    keys: EngineKeys | None = None  # for an engine whose events are re-keyed from their token ids


class KVEventSubscriber:
    """Follows the KV events of the replicas it tracks and applies them to `index`."""

    def __init__(self, index: KVBlockIndex, *, replay_timeout_s: float = REPLAY_TIMEOUT_S) -> None:
        self.index = index
        self._gone = KVEventStats()  # what untracked replicas' streams counted, kept in `stats`
        self._replay_timeout_ms = int(replay_timeout_s * 1000)
        self._context = zmq.asyncio.Context()
        self._feeds: dict[str, _Feed] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._started = False

    def track(
        self, replica: str, endpoint: str, replay_endpoint: str | None = None, *, rekey: bool = False
    ) -> None:
        """Follow `replica`'s events from now on; ValueError naming the endpoint if it is not an address.

        The socket connects at once (ZMQ retries in the background until the publisher
        is up), so nothing published after this call is missed by a slow start(). With
        `rekey`, blocks are indexed by the gateway's hashes of their token ids, not the
        engine's (vLLM's, see rekey.py).
        """
        current = self._feeds.get(replica)
        if current is not None:
            if (current.endpoint, current.replay_endpoint, current.keys is not None) == (
                endpoint,
                replay_endpoint,
                rekey,
            ):
                return
            self.untrack(replica)
        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, RECV_HWM)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise ValueError(f"KV events of {replica}: cannot connect to {endpoint!r}: {exc}") from exc
        feed = self._feeds[replica] = _Feed(replica, endpoint, replay_endpoint, socket)
        if rekey:
            feed.keys = EngineKeys()
        if self._started:
            self._launch(feed)

    def untrack(self, replica: str) -> None:
        """Stop following `replica` and forget its blocks (it is gone, or moved)."""
        feed = self._feeds.pop(replica, None)
        if feed is None:
            return
        self._gone += feed.stats
        self.index.forget(replica)
        if feed.task is None:
            feed.socket.close(linger=0)
        else:
            feed.task.cancel()  # its done callback closes the socket
            self._stopping.add(feed.task)
            feed.task.add_done_callback(self._stopping.discard)

    def tracked(self) -> list[str]:
        return list(self._feeds)

    @property
    def stats(self) -> KVEventStats:
        """Every stream's counters summed, replicas no longer tracked included (a fresh copy)."""
        return sum((feed.stats for feed in self._feeds.values()), KVEventStats()) + self._gone

    def replica_stats(self) -> dict[str, KVEventStats]:
        """Each tracked replica's counters, live: they go on counting (and vanish when it is untracked)."""
        return {replica: feed.stats for replica, feed in self._feeds.items()}

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for feed in self._feeds.values():
            self._launch(feed)

    async def close(self) -> None:
        """Stop every stream and release the sockets, for good; the index keeps what it holds."""
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        tasks += self._stopping
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for feed in self._feeds.values():
            feed.socket.close(linger=0)
            self._gone += feed.stats
        self._feeds.clear()
        self._started = False
        self._context.destroy(linger=0)

    def _launch(self, feed: _Feed) -> None:
        task = asyncio.get_running_loop().create_task(self._follow(feed), name=f"kv-events-{feed.replica}")
        socket = feed.socket
        task.add_done_callback(lambda _: socket.close(linger=0))  # runs even if cancelled before starting
        feed.task = task

    async def _follow(self, feed: _Feed) -> None:
        if feed.replay_endpoint is not None:
            await self._guarded(feed, self._replay(feed, 0))  # what was published before we connected
        while True:
            frames = await feed.socket.recv_multipart()
            await self._guarded(feed, self._on_message(feed, frames))

    async def _guarded(self, feed: _Feed, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except Exception:  # the task boundary: one bad batch must not end the replica's stream
            log.exception("KV events of %s: could not apply a batch; dropping its entries", feed.replica)
            self._reset(feed)

    async def _on_message(self, feed: _Feed, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != SEQ_BYTES:
            feed.stats.decode_errors += 1
            log.warning("KV events of %s: not a [topic, seq, payload] message, skipped", feed.replica)
            return
        seq = int.from_bytes(frames[1], "big")
        if feed.catching_up and feed.last_live < seq <= feed.applied:
            feed.last_live = seq  # already applied by the replay
            return
        feed.catching_up = False
        feed.last_live = seq
        if seq <= feed.applied:
            log.info("KV events of %s: sequence went back to %d, the engine restarted", feed.replica, seq)
            self._reset(feed)
        lost = seq > feed.applied + 1 and (feed.applied >= 0 or feed.replay_endpoint is not None)
        if lost and not await self._recover(feed, seq):
            return
        self._apply(feed, seq, frames[2])

    async def _recover(self, feed: _Feed, seq: int) -> bool:
        """Fill the hole before `seq`; False when that already applied `seq` itself."""
        if feed.applied >= 0:
            feed.stats.gaps += 1
            log.info("KV events of %s: batches %d..%d lost", feed.replica, feed.applied + 1, seq - 1)
        if feed.replay_endpoint is not None:
            await self._replay(feed, feed.applied + 1)
            if feed.applied >= seq:
                return False
            if feed.applied == seq - 1:
                return True
        if feed.applied >= 0:  # the lost batches may have evicted blocks: trust nothing older
            self._reset(feed)
        return True

    async def _replay(self, feed: _Feed, start: int) -> None:
        """Apply the publisher's buffered batches from `start` on, as far as they continue the stream."""
        try:
            complete = await self._replay_into(feed, start)
        except zmq.ZMQError as exc:
            log.warning("KV events of %s: replay from %s failed: %s", feed.replica, feed.replay_endpoint, exc)
            complete = False
        if complete:
            feed.stats.replays += 1
        else:
            feed.stats.replay_failures += 1
        feed.catching_up = feed.applied > feed.last_live  # even a replay cut short may have run ahead

    async def _replay_into(self, feed: _Feed, start: int) -> bool:
        """vLLM's replay exchange; True when it reached the end marker with no hole before it."""
        assert feed.replay_endpoint is not None
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(feed.replay_endpoint)
            await dealer.send_multipart([b"", start.to_bytes(SEQ_BYTES, "big")])
            while await dealer.poll(self._replay_timeout_ms):
                frames = await dealer.recv_multipart()  # [b"", seq, payload]; an empty payload ends it
                if len(frames) != 3 or not frames[2]:
                    return len(frames) == 3
                seq = int.from_bytes(frames[1], "big")
                if seq <= feed.applied:
                    continue
                if feed.applied >= 0 and seq != feed.applied + 1:
                    log.warning("KV events of %s: replay lacks batch %d", feed.replica, feed.applied + 1)
                    return False
                self._apply(feed, seq, frames[2])
            log.warning("KV events of %s: replay from %s timed out", feed.replica, feed.replay_endpoint)
            return False
        finally:
            dealer.close(linger=0)

    def _apply(self, feed: _Feed, seq: int, payload: bytes) -> None:
        feed.applied = seq
        try:
            events = batch_events(msgpack.unpackb(payload))
            if feed.keys is None:
                self.index.apply(feed.replica, events)
            else:
                unkeyed = feed.keys.unkeyed
                self.index.apply_ops(feed.replica, feed.keys.translate(events))
                feed.stats.unkeyed_blocks += feed.keys.unkeyed - unkeyed
        except ValueError as exc:  # msgpack's errors are ValueErrors too
            feed.stats.decode_errors += 1
            log.warning("KV events of %s: batch %d unreadable, entries dropped: %s", feed.replica, seq, exc)
            self._reset(feed)
            feed.applied = seq  # the stream goes on from here
            return
        feed.stats.batches += 1
        feed.stats.events += len(events)

    def _reset(self, feed: _Feed) -> None:
        self.index.clear(feed.replica)
        if feed.keys is not None:
            feed.keys.clear()
        feed.applied = -1
        feed.catching_up = False
        feed.stats.resets += 1


def batch_events(batch: Any) -> list[Any]:
    """The events of a decoded `KVEventBatch`: `[ts, events, rank]`, or a map from non-array encoders."""
    if isinstance(batch, list) and len(batch) >= 2 and isinstance(batch[1], list):
        return batch[1]
    if isinstance(batch, dict) and isinstance(batch.get("events"), list):
        return list(batch["events"])
    raise ValueError(f"not a KVEventBatch: {type(batch).__name__}")
