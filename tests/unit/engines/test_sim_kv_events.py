"""KV events from a sim, received by a real ZMQ SUB socket on 127.0.0.1 and decoded as vLLM's batches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgpack
import pytest
import zmq
import zmq.asyncio
from sim_testkit import FAST_TIME_SCALE, MODEL, in_process

from computenet.engines.sim import SimConfig
from computenet.engines.sim.cli import parse_args
from computenet.engines.sim.kv_events import END_SEQ, KVEventPublisher, OpaqueHashes, encode_batch
from computenet.engines.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, chain_hashes
from computenet.engines.sim.server import create_app
from computenet.pools.processes import free_port

Batch = tuple[int, list[Any]]  # (seq, events)


class _Subscriber:
    def __init__(self, endpoint: str) -> None:
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(endpoint)

    async def receive(self, timeout_s: float = 2.0) -> Batch | None:
        if not await self._socket.poll(timeout_s * 1000):
            return None
        topic, seq, payload = await self._socket.recv_multipart()
        assert topic == b"" and len(seq) == 8
        ts, events, rank = msgpack.unpackb(payload)
        assert isinstance(ts, float) and rank == 0
        return int.from_bytes(seq, "big"), events

    async def drain(self) -> list[Batch]:
        batches = []
        while (batch := await self.receive(0.2)) is not None:
            batches.append(batch)
        return batches

    def close(self) -> None:
        self._socket.close()
        self._context.term()


@pytest.fixture
async def sim_with_events() -> AsyncIterator[tuple[httpx.AsyncClient, _Subscriber]]:
    """An in-process sim (lifespan running) with 8 KV blocks, and a subscriber that already hears it."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = SimConfig(
        model=MODEL, num_gpu_blocks_override=8, kv_events_endpoint=endpoint, time_scale=FAST_TIME_SCALE
    )
    app = create_app(config)
    async with app.router.lifespan_context(app), in_process(app) as client:
        subscriber = _Subscriber(endpoint)
        try:
            for _ in range(100):  # PUB drops what it sends before the subscription arrives
                await client.post("/reset_prefix_cache")
                if await subscriber.receive(0.05) is not None:
                    break
            else:
                pytest.fail("no KV event reached the subscriber")
            await subscriber.drain()
            yield client, subscriber
        finally:
            subscriber.close()


async def _complete(client: httpx.AsyncClient, prompt: list[int]) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 8})
    assert response.status_code == 200


async def test_prompt_blocks_are_published_as_stored_then_removed(
    sim_with_events: tuple[httpx.AsyncClient, _Subscriber],
) -> None:
    client, subscriber = sim_with_events
    first = list(range(1000, 1064))  # 4 full blocks
    await _complete(client, first)
    batches = await subscriber.drain()
    events = [event for _, event_list in batches for event in event_list]
    stored = [event for event in events if event[0] == "BlockStored"]
    assert stored == [["BlockStored", chain_hashes(first, 16), None, first, 16, None, "GPU", None]]

    second = list(range(2000, 2096))  # 6 blocks of prompt + output: only 8 exist, so first's are evicted
    await _complete(client, second)
    later = await subscriber.drain()
    removed = [
        hash_ for _, event_list in later for e in event_list if e[0] == "BlockRemoved" for hash_ in e[1]
    ]
    assert removed and set(removed) <= set(chain_hashes(first, 16))
    assert all(e[2] == "GPU" for _, event_list in later for e in event_list if e[0] == "BlockRemoved")
    sequence = [seq for seq, _ in batches + later]
    assert sequence == list(range(sequence[0], sequence[0] + len(sequence)))


async def test_reset_publishes_all_blocks_cleared(
    sim_with_events: tuple[httpx.AsyncClient, _Subscriber],
) -> None:
    client, subscriber = sim_with_events
    assert (await client.post("/reset_prefix_cache")).json() == {"reset": True}
    batch = await subscriber.receive()
    assert batch is not None and batch[1] == [["AllBlocksCleared"]]


def test_batch_encoding_is_vllm_array_like() -> None:
    events = [BlockStored([7, 8], 6, list(range(32)), 16), BlockRemoved([5]), AllBlocksCleared()]
    decoded = msgpack.unpackb(encode_batch(events, 12.5, data_parallel_rank=3))
    assert decoded == [
        12.5,
        [
            ["BlockStored", [7, 8], 6, list(range(32)), 16, None, "GPU", None],
            ["BlockRemoved", [5], "GPU"],
            ["AllBlocksCleared"],
        ],
        3,
    ]
    assert msgpack.unpackb(encode_batch([BlockRemoved([2**64 - 1])], 0.0))[1][0][1] == [2**64 - 1]


def test_sha256_hashes_are_opaque_and_seeded_per_process_as_vllms() -> None:
    """The same blocks under two publishers' seeds: 32-byte digests, chained through the same map,
    that differ between the two, as two vLLM processes' do without PYTHONHASHSEED."""
    events = [BlockStored([7, 8], 6, list(range(32)), 16), BlockRemoved([8])]
    first, second = OpaqueHashes(), OpaqueHashes()
    stored, removed = msgpack.unpackb(encode_batch(events, 0.0, opaque=first))[1]
    assert [len(h) for h in stored[1]] == [32, 32] and stored[2] == first(6) and stored[3] == list(range(32))
    assert removed[1] == [stored[1][1]]
    assert msgpack.unpackb(encode_batch(events, 0.0, opaque=second))[1][0][1] != stored[1]
    assert parse_args(["--model", "m", "--kv-events-hashes", "sha256"]).config.kv_events_hashes == "sha256"
    with pytest.raises(ValueError, match="kv_events_hashes"):
        SimConfig(model="m", kv_events_hashes="md5")


async def test_a_taken_endpoint_fails_startup() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = SimConfig(model=MODEL, kv_events_endpoint=endpoint)
    holder = create_app(config)
    async with holder.router.lifespan_context(holder):
        second = create_app(config)
        with pytest.raises(ValueError, match="cannot bind"):
            async with second.router.lifespan_context(second):
                pass


async def _replay(endpoint: str, start: int) -> list[Batch]:
    """vLLM's replay exchange from a DEALER (a REQ socket takes one reply only, and a replay is many)."""
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    try:
        await socket.send_multipart([b"", start.to_bytes(8, "big")])
        batches: list[Batch] = []
        while True:
            assert await socket.poll(2000), "the replay socket did not answer"
            delimiter, seq, payload = await socket.recv_multipart()
            assert delimiter == b""
            if not payload:
                assert seq == END_SEQ
                return batches
            batches.append((int.from_bytes(seq, "big"), msgpack.unpackb(payload)[1]))
    finally:
        socket.close()
        context.term()


async def test_a_late_subscriber_replays_what_the_sim_published_before_it_came() -> None:
    endpoint, replay = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    config = SimConfig(
        model=MODEL, kv_events_endpoint=endpoint, kv_events_replay_endpoint=replay, time_scale=FAST_TIME_SCALE
    )
    app = create_app(config)
    async with app.router.lifespan_context(app), in_process(app) as client:
        prompt = list(range(1000, 1064))
        await _complete(client, prompt)  # nobody subscribed: the PUB socket sends these into the void
        batches = await _replay(replay, 0)  # the engine is idle now, and the replay is still answered
    assert [seq for seq, _ in batches] == list(range(len(batches)))
    stored = [e for _, events in batches for e in events if e[0] == "BlockStored"]
    assert stored == [["BlockStored", chain_hashes(prompt, 16), None, prompt, 16, None, "GPU", None]]


async def test_replay_serves_the_last_buffer_steps_batches_from_the_start_asked() -> None:
    endpoint, replay = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    publisher = KVEventPublisher(endpoint, replay_endpoint=replay, buffer_steps=3)
    try:
        for block in range(5):
            publisher.publish([BlockStored([block], None, [], 16)])
        assert [seq for seq, _ in await _replay(replay, 0)] == [2, 3, 4]  # 0 and 1 fell out of the buffer
        assert await _replay(replay, 4) == [(4, [["BlockStored", [4], None, [], 16, None, "GPU", None]])]
        assert await _replay(replay, 5) == []
    finally:
        publisher.close()


async def test_a_taken_replay_endpoint_fails_startup_naming_the_flag() -> None:
    replay = f"tcp://127.0.0.1:{free_port()}"
    holder = KVEventPublisher(f"tcp://127.0.0.1:{free_port()}", replay_endpoint=replay)
    try:
        with pytest.raises(ValueError, match=r"--kv-events-replay-endpoint .*cannot bind"):
            KVEventPublisher(f"tcp://127.0.0.1:{free_port()}", replay_endpoint=replay)
    finally:
        holder.close()


def test_the_replay_flag_needs_the_events_flag() -> None:
    options = parse_args(
        [
            "--model",
            "m",
            "--kv-events-endpoint",
            "tcp://127.0.0.1:1",
            "--kv-events-replay-endpoint",
            "tcp://127.0.0.1:2",
        ]
    )
    assert options.config.kv_events_replay_endpoint == "tcp://127.0.0.1:2"
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--kv-events-replay-endpoint", "tcp://127.0.0.1:2"])
