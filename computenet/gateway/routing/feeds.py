"""Keeping the routing signals' feeds in step with the replicas: scrapes and KV-event streams.

Replicas come and go as the control plane publishes them. Each published replica
of an engine is scraped for its load; each one that publishes KV events is
subscribed to; one that is gone is dropped from both and from the routing
indexes, so nothing the gateway keeps grows with replicas that no longer exist.
The subscriber is created on first need: a gateway with no replica publishing KV
events opens no ZMQ socket, imports no ZMQ, and hashes no prompt for precise routing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import TYPE_CHECKING

from computenet.engines import ENGINES

from ..registry import EndpointRegistry
from .hashers import TOKENIZED_BY_ENGINE
from .pipeline import RoutingState
from .scrape import EngineScraper

if TYPE_CHECKING:
    from .kv_events import KVEventSubscriber
    from .kv_index import KVBlockIndex

log = logging.getLogger(__name__)


def kv_events_available() -> bool:
    """Whether the `kv-events` extra (pyzmq, msgpack) is installed, found without importing it."""
    return all(importlib.util.find_spec(name) is not None for name in ("zmq", "msgpack"))


class SignalFeeds:
    def __init__(
        self,
        registry: EndpointRegistry,
        state: RoutingState,
        index: KVBlockIndex,
        *,
        scrape_interval_s: float,
    ) -> None:
        self.registry, self.state, self.index = registry, state, index
        self.scraper = EngineScraper(state.board, interval_s=scrape_interval_s)
        self.kv_events: KVEventSubscriber | None = None
        self._started = False
        self._starting: asyncio.Task[None] | None = None
        self._no_zmq_logged = False
        registry.on_change(self.sync)

    def sync(self) -> None:
        """Follow every published replica, and drop the ones that are gone."""
        upstreams = self.registry.upstreams()
        live = {u.replica for u in upstreams}
        for up in upstreams:
            if up.engine in ENGINES:
                self.scraper.track(up.replica, up.origin.url, up.engine)
            if up.kv_events and (subscriber := self._subscriber()) is not None:
                subscriber.track(
                    up.replica, up.kv_events, up.kv_events_replay, rekey=up.engine in TOKENIZED_BY_ENGINE
                )
        for replica in self.scraper.tracked() - live:
            self.scraper.untrack(replica)
        if self.kv_events is not None:
            for replica in set(self.kv_events.tracked()) - live:
                self.kv_events.untrack(replica)
        for replica in set(self.state.approx.replicas()) - live:
            self.state.approx.forget(replica)
        self.state.board.forget(live)

    async def start(self) -> None:
        self._started = True
        self.sync()
        await self.scraper.start()
        if self.kv_events is not None:
            await self.kv_events.start()

    async def close(self) -> None:
        await self.scraper.close()
        if self.kv_events is not None:
            await self.kv_events.close()

    def _subscriber(self) -> KVEventSubscriber | None:
        """The KV-event subscriber, created on first need; None without the `kv-events` extra, when
        replicas are routed without their KV events (said once in the log, not on every change)."""
        if self.kv_events is None:
            try:
                from .kv_events import KVEventSubscriber  # needs the kv-events extra (pyzmq, msgpack)
            except ImportError as exc:
                if not self._no_zmq_logged:
                    self._no_zmq_logged = True
                    log.error(
                        "replicas publish KV events but this gateway cannot follow them (%s): "
                        "pip install 'computenet[kv-events]'; until then precise-prefix routes on load",
                        exc,
                    )
                return None
            self.kv_events = KVEventSubscriber(self.index)
            # From now on the precise scorer hashes prompts; before, that would be work for nothing.
            self.state.kv = self.index
            log.info("following engine KV events for precise prefix routing")
            if self._started:  # a replica with KV events appeared while serving
                self._starting = asyncio.get_running_loop().create_task(self.kv_events.start())
        return self.kv_events
