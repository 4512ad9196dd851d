"""The KV-event subscriber against the sim's real publisher on 127.0.0.1: gaps, replays, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import zmq

from computenet.api import Endpoint
from computenet.engines.sim import SimConfig
from computenet.engines.sim import kv_events as sim_kv_events
from computenet.engines.sim.kv_events import KVEventPublisher
from computenet.engines.sim.kvcache import BlockRemoved, BlockStored, chain_hashes
from computenet.engines.sim.server import create_app
from computenet.gateway import EndpointRegistry, Gateway
from computenet.gateway.routing.kv_events import KVEventStats, KVEventSubscriber
from computenet.gateway.routing.kv_index import KVBlockIndex
from computenet.pools.processes import free_port

PROBE = 10**9  # probe blocks get hashes from here on, away from the ones tests assert on


def address() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def store(*hashes: int) -> list[BlockStored]:
    return [BlockStored(list(hashes), None, [], 16)]


@pytest.fixture
def publishers() -> Iterator[Callable[..., KVEventPublisher]]:
    opened: list[KVEventPublisher] = []

    def open_publisher(endpoint: str, replay_endpoint: str | None = None) -> KVEventPublisher:
        opened.append(KVEventPublisher(endpoint, replay_endpoint=replay_endpoint))
        return opened[-1]

    yield open_publisher
    for publisher in opened:
        publisher.close()


async def joined(publisher: KVEventPublisher, subscriber: KVEventSubscriber) -> KVEventStats:
    """Publish probe batches until every tracked replica has one (a SUB socket misses what precedes
    its subscription); the stats as they are then."""
    for probe in range(PROBE, PROBE + 300):
        publisher.publish(store(probe))
        await asyncio.sleep(0.01)
        if all(subscriber.index.blocks(replica) for replica in subscriber.tracked()):
            return dataclasses.replace(subscriber.stats)
    pytest.fail("the subscriber never heard the publisher")


def drop_next_batch(publisher: KVEventPublisher, events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Publish `events` as a batch the PUB socket refuses, as it does at its high-water mark."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise zmq.Again()

    monkeypatch.setattr(publisher._socket, "send_multipart", refuse)
    publisher.publish(events)
    monkeypatch.undo()
    assert publisher.dropped == 1


async def test_a_sims_cached_prompt_is_found_by_a_subscriber_that_came_late(
    subscriber: KVEventSubscriber,
) -> None:
    endpoint, replay = address(), address()
    config = SimConfig(
        model="m", kv_events_endpoint=endpoint, kv_events_replay_endpoint=replay, time_scale=100.0
    )
    app = create_app(config)
    prompt = list(range(1000, 1064))  # 4 full blocks
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://s") as client,
    ):
        body = {"model": "m", "prompt": prompt, "max_tokens": 4}
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        subscriber.track("sim-0", endpoint, replay)  # after the events were published
        await until(lambda: subscriber.index.match(chain_hashes(prompt, 16)) == {"sim-0": 4})
        assert subscriber.stats.replays == 1 and subscriber.stats.resets == 0


async def test_events_are_applied_in_order(
    subscriber: KVEventSubscriber, publishers: Callable[..., KVEventPublisher]
) -> None:
    endpoint = address()
    publisher = publishers(endpoint)
    subscriber.track("a", endpoint)
    before = await joined(publisher, subscriber)
    publisher.publish([*store(1, 2, 3), BlockRemoved([3])])
    await until(lambda: subscriber.stats.batches > before.batches)
    assert subscriber.index.match([1, 2, 3]) == {"a": 2}
    assert subscriber.stats.events - before.events == 2


async def test_a_lost_batch_is_replayed_and_nothing_is_missing(
    subscriber: KVEventSubscriber,
    publishers: Callable[..., KVEventPublisher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, replay = address(), address()
    publisher = publishers(endpoint, replay)
    subscriber.track("a", endpoint, replay)
    before = await joined(publisher, subscriber)
    publisher.publish(store(1))
    drop_next_batch(publisher, store(2), monkeypatch)
    publisher.publish(store(3))
    await until(lambda: subscriber.stats.batches - before.batches == 3)
    assert subscriber.index.match([1, 2, 3]) == {"a": 3}
    stats = subscriber.stats
    assert (stats.gaps - before.gaps, stats.replays - before.replays, stats.resets - before.resets) == (
        1,
        1,
        0,
    )
    publisher.publish(store(4))  # the live stream goes on after the replay
    await until(lambda: subscriber.index.match([1, 2, 3, 4]) == {"a": 4})
    assert subscriber.stats.batches - before.batches == 4  # each batch applied once


async def test_a_lost_batch_without_replay_drops_what_the_replica_held(
    subscriber: KVEventSubscriber,
    publishers: Callable[..., KVEventPublisher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = address()
    publisher = publishers(endpoint)
    subscriber.track("a", endpoint)
    subscriber.track("b", endpoint)  # a second replica, unaffected by a's gap
    await joined(publisher, subscriber)
    publisher.publish(store(1))
    await until(lambda: subscriber.index.match([1]) == {"a": 1, "b": 1})
    subscriber.untrack("b")
    drop_next_batch(publisher, [BlockRemoved([1])], monkeypatch)  # the lost batch evicted block 1
    publisher.publish(store(3))
    await until(lambda: subscriber.index.match([3]) == {"a": 1})
    assert subscriber.index.match([1]) == {}
    assert subscriber.stats.gaps == 1 and subscriber.stats.resets == 1
    assert subscriber.tracked() == ["a"] and subscriber.index.replicas() == ["a"]


async def test_a_replay_endpoint_that_does_not_answer_counts_as_no_replay(
    subscriber: KVEventSubscriber,
    publishers: Callable[..., KVEventPublisher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = address()
    publisher = publishers(endpoint)
    subscriber.track("a", endpoint, replay_endpoint=address())  # nothing listens there
    before = await joined(publisher, subscriber)
    publisher.publish(store(1))
    drop_next_batch(publisher, store(2), monkeypatch)
    publisher.publish(store(3))
    await until(lambda: subscriber.index.match([3]) == {"a": 1})
    assert subscriber.index.match([1]) == {}
    assert subscriber.stats.replay_failures > before.replay_failures
    assert subscriber.stats.resets - before.resets == 1


async def test_a_restarted_publisher_resets_the_replica(
    subscriber: KVEventSubscriber, publishers: Callable[..., KVEventPublisher]
) -> None:
    endpoint, replay = address(), address()
    first = publishers(endpoint, replay)
    subscriber.track("a", endpoint, replay)
    await joined(first, subscriber)
    for block in range(1, 201):  # sequence numbers well past where the next process will start
        first.publish(store(block))
    await until(lambda: subscriber.index.match([200]) == {"a": 1})
    first.close()
    second = publishers(endpoint, replay)  # the engine came back on the same address, cache empty
    before = dataclasses.replace(subscriber.stats)
    for block in range(500, 800):  # until the SUB socket has reconnected and heard one
        second.publish(store(block))
        await asyncio.sleep(0.01)
        if subscriber.stats.resets > before.resets:
            break
    await until(lambda: subscriber.index.match([500]) == {"a": 1})  # its seq 0, missed live, replayed
    assert subscriber.index.match([1]) == {} and subscriber.index.match([200]) == {}
    assert subscriber.stats.resets - before.resets == 1 and subscriber.stats.gaps == before.gaps


async def test_an_unreadable_batch_is_counted_and_skipped(
    subscriber: KVEventSubscriber,
    publishers: Callable[..., KVEventPublisher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = address()
    publisher = publishers(endpoint)
    subscriber.track("a", endpoint)
    before = await joined(publisher, subscriber)
    publisher.publish(store(1))
    with monkeypatch.context() as patch:
        patch.setattr(sim_kv_events, "encode_batch", lambda *args: b"\xc1 not msgpack")
        publisher.publish(store(2))
        patch.setattr(sim_kv_events, "encode_batch", lambda *args: b"\x81\xa1x\x01")  # msgpack {"x": 1}
        publisher.publish(store(2))
    publisher.publish(store(3))
    await until(lambda: subscriber.index.match([3]) == {"a": 1})
    assert subscriber.stats.decode_errors - before.decode_errors == 2
    assert (
        subscriber.index.match([1]) == {}
    )  # what those batches removed is unknown: nothing older is trusted
    assert subscriber.stats.gaps == before.gaps


async def test_tracking_a_bad_address_names_it() -> None:
    subscriber = KVEventSubscriber(KVBlockIndex())
    try:
        with pytest.raises(ValueError, match="not-an-address"):
            subscriber.track("a", "not-an-address")
    finally:
        await subscriber.close()


async def test_without_the_kv_events_extra_replicas_are_routed_on_load_and_it_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """pyzmq missing (faked by hiding the subscriber's module): publishing replicas with KV-event
    sockets neither fails nor opens a socket; the log says what to install, once."""
    monkeypatch.setitem(sys.modules, "computenet.gateway.routing.kv_events", None)
    registry = EndpointRegistry()
    gateway = Gateway(registry)
    endpoints = [
        Endpoint(f"r{i}", "d", "m", f"http://127.0.0.1:{9 + i}", kv_events=address()) for i in range(2)
    ]
    with caplog.at_level(logging.ERROR, logger="computenet.gateway.routing.feeds"):
        await registry.publish("d", endpoints, model="m", policy="precise-prefix")
        await registry.publish("d", endpoints[:1], model="m", policy="precise-prefix")
    assert gateway.feeds.kv_events is None and gateway.routing.kv is None
    assert [r.getMessage().count("computenet[kv-events]") for r in caplog.records] == [1]
