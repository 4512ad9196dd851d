"""What the gateway knows about each endpoint when it routes: its own counts and the engine's.

Two sources, kept apart because they age differently. The gateway's own count
(requests it has in flight to the endpoint) is exact and current. The engine's
figures (running and waiting requests, KV-cache usage, loaded LoRA adapters) come
from scraping its `/metrics` every 100 ms or so; a
scrape older than `stale_after_s` is ignored, so a policy falls back on the
gateway's own counts rather than trust a replica that stopped answering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from computenet.engines.base import EngineLoad

STALE_AFTER_S = 2.0


@dataclass(slots=True)
class EndpointSignals:
    """One endpoint's live state. Mutated in place by the forwarder and the scraper."""

    in_flight: int = 0  # requests this gateway has sent and not finished
    engine: EngineLoad | None = None  # the last successful scrape
    scraped_at: float = -1.0  # clock() of that scrape; -1 never
    scrape_errors: int = 0  # consecutive failed scrapes


@dataclass
class SignalBoard:
    """Signals of every endpoint this gateway routes to, by replica key (`Upstream.replica`)."""

    clock: Callable[[], float] = time.monotonic
    stale_after_s: float = STALE_AFTER_S
    _signals: dict[str, EndpointSignals] = field(default_factory=dict)

    def of(self, replica: str) -> EndpointSignals:
        found = self._signals.get(replica)
        if found is None:
            found = self._signals[replica] = EndpointSignals()
        return found

    def acquire(self, replica: str) -> None:
        self.of(replica).in_flight += 1

    def release(self, replica: str) -> None:
        signals = self.of(replica)
        signals.in_flight = max(0, signals.in_flight - 1)

    def outstanding(self, replica: str) -> int:
        found = self._signals.get(replica)
        return found.in_flight if found is not None else 0

    def record_scrape(self, replica: str, load: EngineLoad) -> None:
        signals = self.of(replica)
        signals.engine, signals.scraped_at, signals.scrape_errors = load, self.clock(), 0

    def record_scrape_error(self, replica: str) -> None:
        self.of(replica).scrape_errors += 1

    def engine(self, replica: str) -> EngineLoad | None:
        """The fresh engine figures of `replica`, or None (never scraped, or stale)."""
        return self.engines((replica,))[0]

    def engines(self, replicas: Sequence[str]) -> list[EngineLoad | None]:
        """The fresh engine figures of each replica, with one clock read for all (the router asks
        for 64 at a time)."""
        limit = self.clock() - self.stale_after_s
        out: list[EngineLoad | None] = []
        for replica in replicas:
            found = self._signals.get(replica)
            out.append(found.engine if found is not None and found.scraped_at >= limit else None)
        return out

    def in_flight(self, replicas: Sequence[str]) -> list[int]:
        signals = self._signals
        return [s.in_flight if (s := signals.get(r)) is not None else 0 for r in replicas]

    def forget(self, keep: set[str]) -> None:
        """Drop endpoints that are gone (with nothing in flight), so the board does not grow forever."""
        for replica in [r for r, s in self._signals.items() if r not in keep and s.in_flight == 0]:
            del self._signals[replica]
