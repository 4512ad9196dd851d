"""Many sim engine cores on one virtual clock: a discrete-event fleet simulator.

Comparing routers and autoscalers needs hours of traffic over tens of replicas;
the real-time sim would take those hours. Here every replica is an `EngineCore`
in this process, and a heap of events (step completions, replicas becoming
ready, autoscaler ticks) merged with the arrival stream moves one virtual clock.
A request arriving at t goes to the replica the router picks and joins its
waiting queue; an idle replica starts a step at once, a busy one takes it at its
next step boundary, as vLLM's engine loop does. Everything that happens at one
instant is applied before any replica starts its next step, so requests that
arrive together are batched together.

Speed comes from `EngineCore.decode_run`: between two arrivals anywhere in the
fleet no replica can gain work, so a steady decode batch runs up to the next
arrival in one call instead of one event per token.

Arrivals are pulled lazily and block hashes are built when a request arrives and
dropped when it finishes, so memory follows the requests in flight, not the trace.

In front of the replicas can sit the gateway's admission (`GatewayGate`, the
same rule as `computenet.gateway.admission`): at most so many requests in flight
per replica, the rest wait in a bounded FIFO and are routed when a slot frees;
a full queue answers 429 and a wait past `max_wait_s` 503. Under overload that
is what a client sees instead of queues that grow without bound. A router may
also refuse a request (every replica filtered out as saturated): 503. With
`max_in_flight="auto"` the per-replica figure is the gateway's `--max-in-flight
auto` (`computenet.engines.sizing`): the replica's KV tokens over a moving
average of finished requests' prompt + output tokens.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..sizing import AUTO, MaxInFlight, TypicalRequest, kv_slots, parse_max_in_flight
from .catalog import GpuSpec, ModelArch
from .core import CoreConfig, EngineCore, StepResult
from .kvcache import segment_hashes
from .routers import ReplicaView, Router
from .scheduler import SimRequest

_STEP_DONE, _READY, _TICK = 0, 1, 2  # event kinds; at one instant the heap orders them by push order


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request as the fleet receives it.

    The prompt's identity is either `block_hashes` (one per full KV block, as
    `kvcache.chain_hashes` makes them) or Mooncake-style `segment_ids` of
    `segment_tokens`-token segments, expanded into block hashes only on arrival.
    """

    arrival_s: float
    prompt_len: int
    output_len: int
    segment_ids: Sequence[int] = ()
    segment_tokens: int = 512
    block_hashes: Sequence[int] | None = None


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request; times are virtual seconds from the start of the run."""

    index: int  # position in the arrival stream
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    replica: int | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    preemptions: int = 0
    error: str | None = None
    status: int = 200  # what the client got: 400 (cannot be served), 429 or 503 (overload)
    routed_s: float | None = None  # when it left the gateway's queue for a replica

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, status: int, error: str) -> None:
        self.status, self.error = status, error


@dataclass(frozen=True)
class FleetTotals:
    requests: int
    completed: int
    failed: int
    prompt_tokens: int  # of completed requests
    cached_tokens: int
    makespan_s: float  # virtual time from 0 to the last finish
    busy_s: float  # summed step time of every replica
    replica_s: float  # summed lifetime of every replica (from scale-up to removal or the end)
    preemptions: int
    steps: int
    peak_replicas: int

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def gpu_busy(self) -> float:
        """Share of replica time spent in steps: replicas x makespan for a fixed fleet."""
        return self.busy_s / self.replica_s if self.replica_s > 0 else 0.0


@dataclass
class FleetResult:
    records: list[RequestRecord]
    totals: FleetTotals


class Autoscaler(Protocol):
    def desired_replicas(self, now_s: float, replicas: Sequence[ReplicaView]) -> int:
        """How many replicas the fleet should have; `replicas` are the ready and starting ones."""
        ...


@dataclass(frozen=True)
class GatewayGate:
    """The gateway's admission in front of the fleet: `computenet gateway`'s `maxInFlight` and its queue.

    Capacity follows the routable replicas (max_in_flight x replicas), as the
    gateway sizes a model's gate by its endpoints; with "auto", each replica counts
    for what its KV cache holds of the typical finished request (`kv_slots`).
    """

    max_in_flight: MaxInFlight  # per replica, or "auto"
    max_queue: int = 1024
    max_wait_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            per_replica = parse_max_in_flight("GatewayGate.max_in_flight", self.max_in_flight)
        except ValueError:
            raise ValueError(
                f'GatewayGate needs max_in_flight >= 1 (or "auto"), got {self.max_in_flight!r}'
            ) from None
        object.__setattr__(self, "max_in_flight", per_replica)  # "AUTO " read as "auto"
        if self.max_queue < 0 or self.max_wait_s <= 0:
            raise ValueError(
                "GatewayGate needs max_queue >= 0 and max_wait_s > 0; got "
                f"{self.max_queue} and {self.max_wait_s}"
            )


@dataclass(frozen=True)
class FleetConfig:
    """Fleet shape and the virtual-time knobs of scaling."""

    replicas: int = 1
    core: CoreConfig = field(default_factory=CoreConfig)
    gate: GatewayGate | None = None  # None: every request goes straight to a replica
    autoscale_interval_s: float = 30.0
    startup_s: float = 60.0  # from scale-up to ready: weights load, CUDA graphs, warm-up
    max_replicas: int = 1024

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"a fleet needs at least one replica, got {self.replicas}")
        if self.autoscale_interval_s <= 0 or self.startup_s < 0:
            raise ValueError("autoscale_interval_s must be positive and startup_s not negative")


class Replica:
    """One replica: its engine core plus what the fleet knows of it; routers see it as a `ReplicaView`."""

    __slots__ = (
        "busy",
        "core",
        "draining",
        "finishing",
        "index",
        "outstanding",
        "ready",
        "removed_s",
        "started_s",
    )

    def __init__(self, index: int, core: EngineCore, started_s: float, *, ready: bool) -> None:
        self.index = index
        self.core = core
        self.started_s = started_s
        self.ready = ready
        self.draining = False
        self.removed_s: float | None = None
        self.busy = False  # a step is in flight
        self.outstanding = 0
        self.finishing: list[SimRequest] = []  # requests the step in flight finishes

    @property
    def running(self) -> int:
        return self.core.num_running

    @property
    def waiting(self) -> int:
        return self.core.num_waiting

    @property
    def kv_usage(self) -> float:
        return self.core.kv.usage

    @property
    def kv_blocks(self) -> int:
        return self.core.kv.num_blocks

    def cached_prefix_tokens(self, block_hashes: Sequence[int]) -> int:
        return self.cached_prefix_blocks(block_hashes) * self.core.kv.block_size

    def cached_prefix_blocks(self, block_hashes: Sequence[int]) -> int:
        return len(self.core.kv.lookup(block_hashes, len(block_hashes)))


class Fleet:
    """Replicas of one model on one GPU type, a router and an optional autoscaler; one `run` each."""

    def __init__(
        self,
        model: ModelArch,
        gpu: GpuSpec,
        config: FleetConfig,
        router: Router,
        autoscaler: Autoscaler | None = None,
    ) -> None:
        self.model, self.gpu, self.config = model, gpu, config
        self.router, self.autoscaler = router, autoscaler
        self.records: list[RequestRecord] = []
        self._events: list[tuple[float, int, int, int]] = []  # (time_s, sequence, kind, replica index)
        self._sequence = itertools.count()
        self.replicas: list[Replica] = []
        self._routable: list[Replica] = []
        for _ in range(config.replicas):
            self._add_replica(0.0, ready=True)
        self.max_model_len = min(model.max_context, self.replicas[0].core.kv_capacity_tokens)
        self._starts: list[Replica] = []  # replicas to start a step once this instant is applied
        self._queue: deque[tuple[Arrival, RequestRecord]] = deque()  # waiting at the gateway's gate
        self._in_flight = 0  # routed and not finished, over the whole fleet
        auto = config.gate is not None and config.gate.max_in_flight == AUTO
        self._typical = TypicalRequest() if auto else None  # finished requests' tokens, for "auto"
        self._next: Arrival | None = None
        self._end_s = 0.0

    def run(self, arrivals: Iterable[Arrival]) -> FleetResult:
        """Replay `arrivals` (sorted by `arrival_s`) until every request has finished or failed."""
        if self.records:
            raise RuntimeError("a Fleet runs once; build a new one for another run")
        source = iter(arrivals)
        self._next = next(source, None)
        if self.autoscaler is not None:
            self._push(self.config.autoscale_interval_s, _TICK, -1)
        while True:
            now = min(self._events[0][0] if self._events else math.inf, self._next_arrival_s())
            if now == math.inf:
                break
            self._apply_events(now)
            self._take_arrivals(now, source)
            self._start_steps(now)
        for _, record in self._queue:  # only when the gate's capacity fell to zero with work queued
            record.fail(503, "no replica left to serve the gateway's queue")
        self._queue.clear()
        return FleetResult(self.records, self._totals())

    # --- the clock ---------------------------------------------------------------------------------

    def _next_arrival_s(self) -> float:
        return self._next.arrival_s if self._next is not None else math.inf

    def _push(self, time_s: float, kind: int, index: int) -> None:
        heapq.heappush(self._events, (time_s, next(self._sequence), kind, index))

    def _apply_events(self, now: float) -> None:
        events = self._events
        while events and events[0][0] <= now:
            _, _, kind, index = heapq.heappop(events)
            if kind == _STEP_DONE:
                self._step_done(self.replicas[index], now)
            elif kind == _READY:
                self._became_ready(self.replicas[index], now)
            else:
                self._tick(now)

    def _take_arrivals(self, now: float, source: Iterator[Arrival]) -> None:
        while self._next is not None and self._next.arrival_s <= now:
            arrival = self._next
            self._next = next(source, None)
            if self._next is not None and self._next.arrival_s < arrival.arrival_s:
                raise ValueError(
                    f"arrivals must be sorted by arrival_s: {self._next.arrival_s} after {arrival.arrival_s}"
                )
            self._admit(arrival, now)

    # --- requests ----------------------------------------------------------------------------------

    def _admit(self, arrival: Arrival, now: float) -> None:
        record = RequestRecord(len(self.records), arrival.arrival_s, arrival.prompt_len, arrival.output_len)
        self.records.append(record)
        self._end_s = max(self._end_s, now)
        refusal = self._refusal(arrival)
        if refusal is not None:
            record.fail(400, refusal)
            return
        gate = self.config.gate
        if gate is None or (not self._queue and self._in_flight < self._capacity()):
            self._route(arrival, record, now)
        elif len(self._queue) >= gate.max_queue:
            record.fail(429, f"the gateway's queue is full ({gate.max_queue} requests waiting)")
        else:
            self._queue.append((arrival, record))

    def _capacity(self) -> int:
        assert self.config.gate is not None
        per_replica = self.config.gate.max_in_flight
        if per_replica == AUTO:  # every replica runs the same core config: the same KV size
            assert self._typical is not None
            per_replica = kv_slots(self.replicas[0].core.kv_capacity_tokens, self._typical.tokens)
        return per_replica * len(self._routable)

    @property
    def gate_capacity(self) -> int | None:
        """Requests the gate lets the fleet have in flight now; None without a gate."""
        return self._capacity() if self.config.gate is not None else None

    def _dequeue(self, now: float) -> None:
        """Route waiting requests while the gate has room; those that waited too long get 503."""
        queue, gate = self._queue, self.config.gate
        while queue and gate is not None and self._in_flight < self._capacity():
            arrival, record = queue.popleft()
            if now - record.arrival_s > gate.max_wait_s:
                record.fail(503, f"no capacity: waited {gate.max_wait_s:g} s at the gateway for a slot")
            else:
                self._route(arrival, record, now)

    def _route(self, arrival: Arrival, record: RequestRecord, now: float) -> None:
        hashes = arrival.block_hashes
        if hashes is None:
            block_size = self.config.core.block_size
            hashes = segment_hashes(
                arrival.segment_ids, arrival.prompt_len, arrival.segment_tokens, block_size
            )
        request = SimRequest(
            str(record.index), arrival.prompt_len, arrival.output_len, hashes, arrival_s=now, owner=record
        )
        position = self.router.choose(request, self._routable)
        if position is None:
            record.fail(503, "every replica is saturated")
            return
        replica = self._routable[position]
        record.replica, record.routed_s = replica.index, now
        replica.outstanding += 1
        self._in_flight += 1
        replica.core.add(request)
        if not replica.busy:
            self._starts.append(replica)

    def _refusal(self, arrival: Arrival) -> str | None:
        """Why the request cannot be served at all (vLLM answers 400), or None."""
        prompt, output = arrival.prompt_len, arrival.output_len
        if prompt < 1 or output < 1:
            return "prompt and output need at least one token"
        if prompt + output > self.max_model_len:
            return (
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {prompt + output} tokens ({prompt} in the messages, {output} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        if not self._routable:
            return "no replica is ready"
        return None

    def _finish(self, request: SimRequest, replica: Replica, now: float) -> None:
        record: RequestRecord = request.owner
        record.first_token_s = request.first_token_s
        record.finish_s = now
        record.cached_tokens = request.cached_tokens
        record.preemptions = request.num_preemptions
        replica.outstanding -= 1
        self._in_flight -= 1
        self._end_s = max(self._end_s, now)
        if self._typical is not None:
            self._typical.observe(record.prompt_tokens + record.output_tokens)

    # --- steps -------------------------------------------------------------------------------------

    def _start_steps(self, now: float) -> None:
        starts, self._starts = self._starts, []
        for replica in starts:
            if not replica.busy and replica.removed_s is None and replica.core.has_work:
                self._start(replica, now)

    def _start(self, replica: Replica, now: float) -> None:
        core = replica.core
        result: StepResult | None = core.decode_run(now, self._next_arrival_s())
        if result is None:
            result = core.step(now)
            if result.duration_s <= 0:
                raise RuntimeError(f"replica {replica.index} has work but scheduled nothing at {now} s")
        replica.busy = True
        replica.finishing = result.finished
        self._push(now + result.duration_s, _STEP_DONE, replica.index)

    def _step_done(self, replica: Replica, now: float) -> None:
        replica.busy = False
        for request in replica.finishing:
            self._finish(request, replica, now)
        replica.finishing = []
        self._dequeue(now)
        if replica.core.has_work:
            self._starts.append(replica)
        elif replica.draining:
            replica.removed_s = now

    # --- scaling -----------------------------------------------------------------------------------

    def _add_replica(self, now: float, *, ready: bool) -> Replica:
        core = EngineCore(self.model, self.gpu, self.config.core)
        replica = Replica(len(self.replicas), core, now, ready=ready)
        self.replicas.append(replica)
        if ready:
            self._routable.append(replica)
        else:
            self._push(now + self.config.startup_s, _READY, replica.index)
        return replica

    def _became_ready(self, replica: Replica, now: float) -> None:
        if replica.removed_s is None:
            replica.ready = True
            self._routable.append(replica)
            self._dequeue(now)

    def _active(self) -> list[Replica]:
        """Replicas that count towards the desired number: ready or starting, not draining."""
        return [r for r in self.replicas if r.removed_s is None and not r.draining]

    def _tick(self, now: float) -> None:
        assert self.autoscaler is not None
        active = self._active()
        desired = self.autoscaler.desired_replicas(now, active)
        desired = max(1, min(self.config.max_replicas, desired))  # scale-to-zero needs a request queue
        for _ in range(desired - len(active)):
            self._add_replica(now, ready=self.config.startup_s == 0)
        for replica in reversed(active[desired:]):  # the newest go first
            self._drain(replica, now)
        if self._next is not None or any(r.busy or r.core.has_work for r in self.replicas):
            self._push(now + self.config.autoscale_interval_s, _TICK, -1)

    def _drain(self, replica: Replica, now: float) -> None:
        """Stop routing to `replica`; it leaves once its queue is empty."""
        replica.draining = True
        if replica in self._routable:
            self._routable.remove(replica)
        if not replica.busy and not replica.core.has_work:
            replica.removed_s = now

    # --- results -----------------------------------------------------------------------------------

    def _totals(self) -> FleetTotals:
        records, end = self.records, self._end_s
        done = [r for r in records if r.ok]
        cores = [replica.core for replica in self.replicas]
        return FleetTotals(
            requests=len(records),
            completed=len(done),
            failed=len(records) - len(done),
            prompt_tokens=sum(r.prompt_tokens for r in done),
            cached_tokens=sum(r.cached_tokens for r in done),
            makespan_s=end,
            busy_s=sum(core.busy_s for core in cores),
            replica_s=sum(_lifetime(replica, end) for replica in self.replicas),
            preemptions=sum(core.scheduler.preemptions for core in cores),
            steps=sum(core.steps for core in cores),
            peak_replicas=_peak(self.replicas),
        )


def _lifetime(replica: Replica, end_s: float) -> float:
    removed = end_s if replica.removed_s is None else replica.removed_s
    return max(0.0, min(removed, end_s) - replica.started_s)


def _peak(replicas: Sequence[Replica]) -> int:
    """Most replicas alive at once (starting ones included: they hold their GPUs)."""
    starts = [(r.started_s, 1) for r in replicas]
    changes = sorted(starts + [(r.removed_s, -1) for r in replicas if r.removed_s is not None])
    return max(itertools.accumulate(delta for _, delta in changes))


def simulate(
    arrivals: Iterable[Arrival],
    model: ModelArch,
    gpu: GpuSpec,
    config: FleetConfig,
    router: Router,
    autoscaler: Autoscaler | None = None,
) -> FleetResult:
    """Build a fleet, replay `arrivals` through it and return what happened."""
    return Fleet(model, gpu, config, router, autoscaler).run(arrivals)
