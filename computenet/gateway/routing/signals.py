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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from computenet.engines.base import EngineLoad

STALE_AFTER_S = 2.0


@dataclass(slots=True)
class EndpointSignals:
    """One endpoint's live state. Mutated in place by the forwarder and the scraper."""

    in_flight: int = 0  # requests this gateway has sent and not finished
    prefill_tokens: int = 0  # uncached prompt tokens this gateway sent that have no first token yet
    prefilling: int = 0  # the requests those tokens belong to
    engine: EngineLoad | None = None  # the last successful scrape
    scraped_at: float = -1.0  # clock() of that scrape; -1 never
    scrape_errors: int = 0  # consecutive failed scrapes
    scrape_errors_total: int = 0  # every failed scrape, for the gateway's metrics


@dataclass
class SignalBoard:
    """Signals of every endpoint this gateway routes to, by replica key (`Upstream.replica`)."""

    clock: Callable[[], float] = time.monotonic
    stale_after_s: float = STALE_AFTER_S
    _signals: dict[str, EndpointSignals] = field(default_factory=dict)
    # over every endpoint's last scrape: replicas running each LoRA adapter, and replicas with
    # every adapter slot taken (see `lora_matters`)
    _adapters: Counter[str] = field(default_factory=Counter)
    _lora_full: int = 0
    # Bumped whenever some endpoint's reported KV size changes (first scrape, a restart with another
    # size): what `--max-in-flight auto` caches its gate sizes against (gateway/sizing.py).
    kv_version: int = 0

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

    def begin_prefill(self, replica: str, tokens: int) -> None:
        """A prompt with `tokens` to compute was sent: prefill work queued ahead of the next one."""
        signals = self.of(replica)
        signals.prefill_tokens += tokens
        signals.prefilling += 1

    def end_prefill(self, replica: str, tokens: int) -> None:
        """Its first token came back (or it ended without one): that prefill is no longer ahead."""
        signals = self.of(replica)
        signals.prefill_tokens = max(0, signals.prefill_tokens - tokens)
        signals.prefilling = max(0, signals.prefilling - 1)

    def outstanding(self, replica: str) -> int:
        found = self._signals.get(replica)
        return found.in_flight if found is not None else 0

    def record_scrape(self, replica: str, load: EngineLoad) -> None:
        signals = self.of(replica)
        before = signals.engine
        if before is not None:
            self._count_lora(before, -1)
        if (before.kv_capacity_tokens if before is not None else 0.0) != load.kv_capacity_tokens:
            self.kv_version += 1
        self._count_lora(load, 1)
        signals.engine, signals.scraped_at, signals.scrape_errors = load, self.clock(), 0

    def lora_matters(self, model: str) -> bool:
        """Whether LoRA affinity could tell endpoints apart for `model`: some replica runs it as an
        adapter, or some replica has no adapter slot free. Counted as scrapes arrive, so a fleet
        where neither holds (nearly every request) is told in one lookup, not a pass over 64."""
        return self._lora_full > 0 or self.serves_adapter(model)

    def serves_adapter(self, model: str) -> bool:
        """Whether some scraped replica has a LoRA adapter of this name loaded."""
        return self._adapters[model] > 0

    def _count_lora(self, load: EngineLoad, sign: int) -> None:
        if load.lora_adapters:
            for name in load.lora_adapters:
                self._adapters[name] += sign
                if not self._adapters[name]:
                    del self._adapters[name]
        if load.max_lora and len(load.lora_adapters) >= load.max_lora:
            self._lora_full += sign

    def record_scrape_error(self, replica: str) -> None:
        signals = self.of(replica)
        signals.scrape_errors += 1
        signals.scrape_errors_total += 1

    def get(self, replica: str) -> EndpointSignals | None:
        """What the board holds of `replica`, without adding it (for readers such as /metrics)."""
        return self._signals.get(replica)

    def engine(self, replica: str) -> EngineLoad | None:
        """The fresh engine figures of `replica`, or None (never scraped, or stale)."""
        return self.engines((replica,))[0]

    def engines(self, replicas: Sequence[str]) -> list[EngineLoad | None]:
        """The fresh engine figures of each replica (None: never scraped, or stale)."""
        return self.read(replicas)[1]

    def in_flight(self, replicas: Sequence[str]) -> list[int]:
        return self.read(replicas)[0]

    def read(
        self, replicas: Sequence[str]
    ) -> tuple[list[int], list[EngineLoad | None], list[EndpointSignals | None]]:
        """Each replica's in-flight count, fresh engine figures and signals (None: never seen). The
        router asks for all three, for 64 replicas at a time on every request: one lookup per
        replica and one clock read serve them all."""
        limit = self.clock() - self.stale_after_s
        found = list(map(self._signals.get, replicas))
        in_flight = [s.in_flight if s is not None else 0 for s in found]
        engines = [s.engine if s is not None and s.scraped_at >= limit else None for s in found]
        return in_flight, engines, found

    def forget(self, keep: set[str]) -> None:
        """Drop endpoints that are gone (with nothing in flight), so the board does not grow forever."""
        for replica in [r for r, s in self._signals.items() if r not in keep and s.in_flight == 0]:
            gone = self._signals.pop(replica)
            if gone.engine is not None:
                self._count_lora(gone.engine, -1)
