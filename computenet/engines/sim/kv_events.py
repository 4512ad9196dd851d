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
  newer vLLM) is sent as None, and older decoders ignore extra trailing fields.

Differences: the socket always binds the endpoint (a router subscribes to each
replica), where vLLM binds only wildcard/ipc addresses and connects otherwise;
and there is no replay ROUTER socket (vLLM's optional `replay_endpoint`), so a
subscriber that misses a batch resynchronises from later events. Sending never
blocks the engine loop: at the high-water mark a batch is dropped and counted.

pyzmq and msgpack are imported here only, so a sim without `--kv-events-endpoint`
needs neither.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from .kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

MEDIUM_GPU = "GPU"
SEND_HWM = 100_000  # vLLM's default high-water mark for the PUB socket


def event_fields(event: KVEvent) -> list[Any]:
    """One event as msgspec's tagged array_like encoding of vLLM's struct."""
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


def encode_batch(events: Sequence[KVEvent], ts: float, data_parallel_rank: int = 0) -> bytes:
    """msgpack of a `KVEventBatch`: `[ts, events, data_parallel_rank]`."""
    packed: bytes = msgpack.packb([ts, [event_fields(e) for e in events], data_parallel_rank])
    return packed


class KVEventPublisher:
    """Binds a PUB socket at `endpoint` and sends each batch of events as one numbered message."""

    def __init__(self, endpoint: str, *, topic: bytes = b"", data_parallel_rank: int = 0) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.set_hwm(SEND_HWM)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"--kv-events-endpoint {endpoint}: cannot bind: {exc}") from exc
        self._topic = topic
        self._rank = data_parallel_rank
        self._seq = 0
        self.dropped = 0  # batches refused at the high-water mark

    def publish(self, events: Sequence[KVEvent]) -> None:
        payload = encode_batch(events, time.time(), self._rank)
        frames = (self._topic, self._seq.to_bytes(8, "big"), payload)
        self._seq += 1
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()
