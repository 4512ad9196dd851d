"""KV-cache events on the wire exactly as vLLM publishes them, so KV-aware routers work on a sim.

Followed from vLLM's `vllm/distributed/kv_events.py` (`ZmqEventPublisher`,
`KVEventBatch`) and its `examples/online_serving/kv_events_subscriber.py`:

* a ZMQ PUB socket; every batch is one multipart message
  `[topic, seq, payload]`: topic `b""` by default, seq an 8-byte big-endian
  counter starting at 0 and rising by one per batch (subscribers spot gaps);
* the payload is msgpack of `KVEventBatch`, a msgspec struct with
  `array_like=True`: `[ts, [event, ...], data_parallel_rank]`, ts in Unix seconds;
* each event is a tagged array_like struct whose tag is the class name:
  `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]`,
  `["BlockRemoved", block_hashes, medium]`, `["AllBlocksCleared"]`. The medium
  is `"GPU"` as vLLM's block pool sends; `lora_name` (added after `medium` in
  newer vLLM) is sent as None, and older decoders ignore extra trailing fields;
* with a replay endpoint (vLLM's `replay_endpoint`), a ROUTER socket serves
  the last `buffer_steps` batches: a client sends `[b"", start seq]` from a
  DEALER socket and receives `[b"", seq, payload]` for every buffered batch from
  there, then `[b"", -1 as 8 signed bytes, b""]`. (vLLM's example uses a REQ
  socket, which accepts one reply per request and so sees only the first batch.)
* block hashes are the sim's own 64-bit chain (`hashes="chain"`), which a router
  can compute from a prompt's text; or, with `hashes="sha256"`, 32-byte digests of
  those under a seed drawn at random per process, as vLLM's are without
  `PYTHONHASHSEED`: opaque, so a router has to key blocks by their token ids, as it
  must for vLLM (the gateway's `routing/rekey.py`).

Differences: the sockets always bind (a router subscribes to each replica),
where vLLM binds only wildcard/ipc addresses and connects otherwise. Sending
never blocks the engine loop: at the high-water mark a batch is dropped and
counted, but it is still buffered, so a subscriber heals the gap by replay.
Replays are served by a small thread, not polled from `publish()`: a replica
that has gone idle still answers the subscriber that joins it late, and a
10,000-batch replay to a slow reader never stalls an engine step. The thread
owns the ROUTER socket, shares only the buffer (under a lock) and ends when
`close()` terminates the context. Unlike vLLM's, the ROUTER refuses to drop
replies at its high-water mark (`ROUTER_MANDATORY`): it waits for the reader,
up to `REPLAY_SEND_TIMEOUT_MS` a message, so a replay has no silent holes.

pyzmq and msgpack are imported here only, so a sim without `--kv-events-endpoint`
needs neither.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from .config import KV_EVENT_HASHES
from .kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

MEDIUM_GPU = "GPU"
SEND_HWM = 100_000  # vLLM's default high-water mark for the PUB socket
BUFFER_STEPS = 10_000  # vLLM's default: batches kept for replay
REPLAY_SEND_TIMEOUT_MS = 2_000  # a replay reader this slow (or gone) is abandoned
END_SEQ = (-1).to_bytes(8, "big", signed=True)  # the seq frame of vLLM's end-of-replay marker


class OpaqueHashes:
    """The sim's block hashes as per-process seeded SHA-256 digests, like vLLM's without PYTHONHASHSEED."""

    def __init__(self, seed: bytes | None = None) -> None:
        self._seed = os.urandom(32) if seed is None else seed

    def __call__(self, block_hash: int) -> bytes:
        return hashlib.sha256(self._seed + block_hash.to_bytes(8, "big")).digest()


def event_fields(event: KVEvent, opaque: OpaqueHashes | None = None) -> list[Any]:
    """One event as msgspec's tagged array_like encoding of vLLM's struct."""
    if opaque is not None:
        if isinstance(event, BlockStored):
            parent = event.parent_block_hash
            return [
                "BlockStored",
                [opaque(h) for h in event.block_hashes],
                None if parent is None else opaque(parent),
                event.token_ids,
                event.block_size,
                None,
                MEDIUM_GPU,
                None,
            ]
        if isinstance(event, BlockRemoved):
            return ["BlockRemoved", [opaque(h) for h in event.block_hashes], MEDIUM_GPU]
    if isinstance(event, BlockStored):
        return [
            "BlockStored",
            event.block_hashes,
            event.parent_block_hash,
            event.token_ids,
            event.block_size,
            None,  # lora_id
            MEDIUM_GPU,
            None,  # lora_name
        ]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", event.block_hashes, MEDIUM_GPU]
    assert isinstance(event, AllBlocksCleared)
    return ["AllBlocksCleared"]


def encode_batch(
    events: Sequence[KVEvent], ts: float, data_parallel_rank: int = 0, opaque: OpaqueHashes | None = None
) -> bytes:
    """msgpack of a `KVEventBatch`: `[ts, events, data_parallel_rank]`."""
    packed: bytes = msgpack.packb([ts, [event_fields(e, opaque) for e in events], data_parallel_rank])
    return packed


class KVEventPublisher:
    """Binds a PUB socket at `endpoint` and sends each batch of events as one numbered message.

    With `replay_endpoint`, also binds vLLM's replay ROUTER socket there and keeps the
    last `buffer_steps` batches for it.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        replay_endpoint: str | None = None,
        buffer_steps: int = BUFFER_STEPS,
        topic: bytes = b"",
        data_parallel_rank: int = 0,
        hashes: str = "chain",
    ) -> None:
        if hashes not in KV_EVENT_HASHES:
            raise ValueError(f"KV-event hashes must be one of {', '.join(KV_EVENT_HASHES)}, got {hashes!r}")
        self._opaque = OpaqueHashes() if hashes == "sha256" else None
        self._context = zmq.Context()
        self._replayer: threading.Thread | None = None
        self._socket = self._context.socket(zmq.PUB)
        self._socket.set_hwm(SEND_HWM)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._bind(self._socket, endpoint, "--kv-events-endpoint")
        self._topic = topic
        self._rank = data_parallel_rank
        self._seq = 0
        self.dropped = 0  # batches refused at the high-water mark
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._buffer_lock = threading.Lock()
        if replay_endpoint is not None:
            router = self._context.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.SNDTIMEO, REPLAY_SEND_TIMEOUT_MS)
            self._bind(router, replay_endpoint, "--kv-events-replay-endpoint")
            self._replayer = threading.Thread(
                target=self._serve_replays, args=(router,), name="kv-events-replay", daemon=True
            )
            self._replayer.start()  # the thread now owns `router` (starting it is the memory barrier)

    def _bind(self, socket: zmq.Socket[bytes], endpoint: str, flag: str) -> None:
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            self.close()
            raise ValueError(f"{flag} {endpoint}: cannot bind: {exc}") from exc

    def publish(self, events: Sequence[KVEvent]) -> None:
        payload = encode_batch(events, time.time(), self._rank, self._opaque)
        seq_bytes = self._seq.to_bytes(8, "big")
        if self._replayer is not None:  # buffered before sending: a subscriber that sees it can replay it
            with self._buffer_lock:
                self._buffer.append((self._seq, payload))
        self._seq += 1
        try:
            self._socket.send_multipart((self._topic, seq_bytes, payload), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        """Close the sockets; terminating the context also wakes and ends the replay thread."""
        self._socket.close(linger=0)
        self._context.term()
        if self._replayer is not None:
            self._replayer.join()

    def _serve_replays(self, router: zmq.Socket[bytes]) -> None:
        try:
            while True:
                frames = router.recv_multipart()
                if len(frames) == 3:  # [client identity, b"", start seq]
                    self._replay(router, frames[0], int.from_bytes(frames[2], "big"))
        except zmq.ContextTerminated:
            pass
        finally:
            router.close(linger=0)

    def _replay(self, router: zmq.Socket[bytes], client: bytes, start: int) -> None:
        with self._buffer_lock:
            batches = [batch for batch in self._buffer if batch[0] >= start]
        try:
            for seq, payload in batches:
                router.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
            router.send_multipart((client, b"", END_SEQ, b""))
        except zmq.ContextTerminated:
            raise
        except zmq.ZMQError:  # the reader left (EHOSTUNREACH) or stalled past the send timeout
            pass
