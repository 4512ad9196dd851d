"""The routing feeds' Prometheus series: what an operator sees after a failed scrape or lost KV events.

Each test makes the real thing happen (a replica whose metrics do not answer, a KV-event
batch the publisher drops) and reads the series as Prometheus would, from the text
exposition of a `GatewayMetrics` registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from computenet.api import Endpoint
from computenet.engines.base import EngineLoad
from computenet.engines.sim.kv_events import KVEventPublisher
from computenet.engines.sim.kvcache import BlockRemoved
from computenet.gateway import EndpointRegistry, Gateway
from computenet.gateway.metrics import GatewayMetrics
from computenet.gateway.routing.kv_events import KVEventSubscriber
from computenet.gateway.routing.kv_index import KVBlockIndex
from computenet.gateway.routing.scrape import EngineScraper
from computenet.gateway.routing.signals import SignalBoard
from computenet.pools.processes import free_port

from .test_kv_events import PROBE, address, drop_next_batch, store, until
from .test_scrape import INTERVAL_S, eventually, metrics_server, vllm_text

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: GatewayMetrics) -> Samples:
    """Every sample of the registry, by (name, sorted labels), as a scrape of /metrics reads them."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of(found: Samples, name: str, endpoint: str | None = None) -> float | None:
    labels = (("endpoint", endpoint),) if endpoint is not None else ()
    return found.get((f"computenet_gateway_{name}", labels))


@dataclass
class Feeds:
    """The parts of the gateway's `SignalFeeds` that the metrics read."""

    scraper: EngineScraper
    index: KVBlockIndex = field(default_factory=KVBlockIndex)
    kv_events: KVEventSubscriber | None = None


async def test_a_replica_that_stops_answering_scrapes_shows_errors_and_staleness() -> None:
    clock = [100.0]
    board = SignalBoard(clock=lambda: clock[0])
    scraper = EngineScraper(board, interval_s=INTERVAL_S, timeout_s=1.0)
    metrics = GatewayMetrics()
    metrics.add_routing_feeds(Feeds(scraper))
    async with metrics_server(vllm_text(running=3)) as server:
        scraper.track("r0", server.url, "vllm")
        scraper.track("gone", f"http://127.0.0.1:{free_port()}", "vllm")  # nothing listens there
        await scraper.start()
        try:
            await eventually(lambda: board.engine("r0") is not None and board.of("gone").scrape_errors >= 2)
            clock[0] += 0.5
            found = samples(metrics)
            assert of(found, "engine_scrape_errors_total", "r0") == 0
            assert (of(found, "engine_scrape_errors_total", "gone") or 0) >= 2
            assert of(found, "engine_scrape_stale", "r0") == 0
            assert of(found, "engine_scrape_stale", "gone") == 1  # never scraped
            assert of(found, "engine_scrape_age_seconds", "gone") is None
            assert 0.5 <= (of(found, "engine_scrape_age_seconds", "r0") or 0) < 1.5
            await server.stop()  # r0 dies: errors count up, its figures age and go stale
            before = board.of("r0").scrape_errors_total
            await eventually(lambda: board.of("r0").scrape_errors_total >= before + 2)
            clock[0] += 5.0
            found = samples(metrics)
        finally:
            await scraper.close()
    assert (of(found, "engine_scrape_errors_total", "r0") or 0) >= 2
    assert (of(found, "engine_scrape_age_seconds", "r0") or 0) >= 5.0
    assert of(found, "engine_scrape_stale", "r0") == 1


def test_a_recovered_scrape_keeps_the_error_count_but_is_fresh_again() -> None:
    board = SignalBoard()
    scraper = EngineScraper(board)
    scraper.track("r0", "http://127.0.0.1:1", "sim")
    metrics = GatewayMetrics()
    metrics.add_routing_feeds(Feeds(scraper))
    board.record_scrape_error("r0")
    board.record_scrape_error("r0")
    board.record_scrape("r0", EngineLoad(waiting=1))
    found = samples(metrics)
    assert of(found, "engine_scrape_errors_total", "r0") == 2  # a counter: a success does not reset it
    assert board.of("r0").scrape_errors == 0  # what routing reads: consecutive failures
    assert of(found, "engine_scrape_stale", "r0") == 0


def test_before_any_kv_events_the_index_series_are_there_and_empty() -> None:
    metrics = GatewayMetrics()
    metrics.add_routing_feeds(Feeds(EngineScraper(SignalBoard())))
    found = samples(metrics)
    assert of(found, "kv_index_distinct_blocks") == 0
    assert not [key for key in found if key[0].startswith("computenet_gateway_kv_event")]


@pytest.fixture
def two_publishers() -> Iterator[list[tuple[str, KVEventPublisher]]]:
    """Replica a's publisher and replica b's, each on its own address."""
    endpoints = [address(), address()]
    opened = [(endpoint, KVEventPublisher(endpoint)) for endpoint in endpoints]
    yield opened
    for _, publisher in opened:
        publisher.close()


async def test_a_gap_in_kv_events_shows_per_replica(
    subscriber: KVEventSubscriber,
    two_publishers: list[tuple[str, KVEventPublisher]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = GatewayMetrics()
    metrics.add_routing_feeds(Feeds(EngineScraper(SignalBoard()), subscriber.index, subscriber))
    (lossy, lossy_publisher), (steady, steady_publisher) = two_publishers
    subscriber.track("a", lossy)
    subscriber.track("b", steady)
    for probe in range(PROBE, PROBE + 300):  # until both SUB sockets hear their publisher
        lossy_publisher.publish(store(probe))
        steady_publisher.publish(store(probe))
        await asyncio.sleep(0.01)
        if subscriber.index.blocks("a") and subscriber.index.blocks("b"):
            break
    lossy_publisher.publish(store(1, 2))
    steady_publisher.publish(store(1))
    await until(lambda: subscriber.index.match([1, 2]) == {"a": 2, "b": 1})
    before = samples(metrics)
    drop_next_batch(lossy_publisher, [BlockRemoved([1])], monkeypatch)
    lossy_publisher.publish(store(3))
    await until(lambda: subscriber.index.match([3]) == {"a": 1})
    after = samples(metrics)

    def delta(name: str, endpoint: str) -> float:
        return (of(after, name, endpoint) or 0) - (of(before, name, endpoint) or 0)

    assert (delta("kv_event_gaps_total", "a"), delta("kv_event_resets_total", "a")) == (1, 1)
    assert (delta("kv_event_gaps_total", "b"), delta("kv_event_resets_total", "b")) == (0, 0)
    assert delta("kv_event_batches_total", "a") == 1 and delta("kv_events_total", "a") == 1
    assert of(after, "kv_index_blocks", "a") == 1  # only block 3: the rest was dropped with the gap
    assert of(after, "kv_index_blocks", "b") == (of(before, "kv_index_blocks", "b") or 0)
    assert of(after, "kv_index_distinct_blocks") == len(subscriber.index)
    totals = subscriber.stats
    assert totals.gaps == 1 and totals.resets == 1
    subscriber.untrack("a")  # its series go, the subscriber's totals keep what it counted
    gone = samples(metrics)
    assert of(gone, "kv_event_gaps_total", "a") is None and of(gone, "kv_index_blocks", "a") is None
    assert subscriber.stats.gaps == 1


async def test_the_gateways_own_feeds_are_read_as_they_are_created() -> None:
    """A real `Gateway` exports its own feeds on its /metrics registry; the KV-event subscriber
    appears after the collector is made."""
    registry = EndpointRegistry()
    gateway = Gateway(registry, scrape_interval_s=INTERVAL_S)
    metrics = gateway.metrics
    await gateway.start()
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        events = address()
        endpoint = Endpoint("r0", "d", "m", dead, kv_events=events)
        await registry.publish("d", [endpoint], model="m", policy="precise-prefix")
        await eventually(lambda: gateway.routing.board.of("r0").scrape_errors >= 1)
        found = samples(metrics)
    finally:
        await gateway.close()
    assert (of(found, "engine_scrape_errors_total", "r0") or 0) >= 1
    assert of(found, "kv_event_gaps_total", "r0") == 0
