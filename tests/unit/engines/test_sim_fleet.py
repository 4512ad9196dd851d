"""The fleet simulator: replicas on one virtual clock, routers and the autoscaler hook."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from computenet.engines.sim.catalog import load_catalog
from computenet.engines.sim.core import CoreConfig, _decode_span, _decode_span_stepwise
from computenet.engines.sim.fleet import (
    Arrival,
    Fleet,
    FleetConfig,
    FleetResult,
    GatewayGate,
    RequestRecord,
    simulate,
)
from computenet.engines.sim.perf import PerfModel
from computenet.engines.sim.routers import ROUTERS, ReplicaView, Router, make_router
from computenet.engines.sim.scheduler import SimRequest
from computenet.engines.sizing import DEFAULT_PER_REPLICA

CATALOG = load_catalog()
MODEL, GPU = CATALOG.model("llama-3.1-8b"), CATALOG.gpu("H100")


def run(
    arrivals: Sequence[Arrival], router: str | Router = "round_robin", *, replicas: int = 4
) -> FleetResult:
    chosen = make_router(router, seed=7) if isinstance(router, str) else router
    return simulate(arrivals, MODEL, GPU, FleetConfig(replicas=replicas), chosen)


def steady(count: int, gap_s: float, *, prompt: int = 600, output: int = 40) -> list[Arrival]:
    return [Arrival(i * gap_s, prompt, output, (1000 + i,)) for i in range(count)]


def shared_prefixes(groups: int, count: int) -> list[Arrival]:
    """`count` requests over `groups` conversations in seeded random order: a 1536-token shared prefix,
    then a private tail."""
    order = random.Random(1)
    return [
        Arrival(i * 0.5, 1536 + 512, 8, (group * 10, group * 10 + 1, group * 10 + 2, 100_000 + i))
        for i, group in ((i, order.randrange(groups)) for i in range(count))
    ]


def per_replica(result: FleetResult) -> Counter[int | None]:
    return Counter(record.replica for record in result.records)


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_every_request_is_accounted_for_and_timed(router: str) -> None:
    arrivals = [*steady(30, 0.05), Arrival(2.0, 200_000, 10)]  # the last cannot fit any replica
    result = run(arrivals, router)
    totals = result.totals
    assert totals.requests == 31 and totals.completed == 30 and totals.failed == 1
    for record in result.records[:30]:
        assert record.ok and record.replica is not None
        assert record.arrival_s < record.first_token_s <= record.finish_s <= totals.makespan_s  # type: ignore[operator]
    assert 0 < totals.gpu_busy <= 1 and 0 <= totals.prefix_hit_rate <= 1


def test_a_too_long_request_fails_like_vllm() -> None:
    record = run([Arrival(0.0, 131_000, 500)]).records[0]
    assert not record.ok and record.replica is None
    assert record.error is not None and "maximum context length is" in record.error


def test_the_same_seed_gives_the_same_result() -> None:
    arrivals = shared_prefixes(5, 60)
    first, second = run(arrivals, "random"), run(arrivals, "random")
    assert first.records == second.records and first.totals == second.totals


def test_round_robin_spreads_evenly() -> None:
    assert set(per_replica(run(steady(40, 0.2), "round_robin")).values()) == {10}


def test_least_outstanding_balances_a_burst() -> None:
    burst = [Arrival(0.0, 300, 500, (i,)) for i in range(22)]  # all still running when the last arrives
    assert sorted(per_replica(run(burst, "least_outstanding")).values()) == [5, 5, 6, 6]


def test_prefix_routes_a_repeated_prefix_where_it_is_cached() -> None:
    first, again = Arrival(0.0, 2048, 8, (1, 2, 3, 4)), Arrival(5.0, 2048, 8, (1, 2, 3, 5))
    warmups = [Arrival(1.0 + i, 600, 8, (50 + i,)) for i in range(3)]  # others cache other prompts
    result = run([first, *warmups, again], "prefix")
    assert result.records[-1].replica == result.records[0].replica
    assert result.records[-1].cached_tokens == 1536


def test_prefix_aware_routers_hit_more_than_random() -> None:
    arrivals = shared_prefixes(12, 120)
    rates = {name: run(arrivals, name).totals.prefix_hit_rate for name in ROUTERS}
    blind = max(rates["random"], rates["round_robin"], rates["least_outstanding"])
    assert rates["prefix"] > blind + 0.1 and rates["prefix_load"] > blind + 0.1


def test_arrivals_together_are_batched_together() -> None:
    result = run([Arrival(0.0, 100, 20, (i,)) for i in range(8)], replicas=1)
    assert len({record.first_token_s for record in result.records}) == 1


def test_unsorted_arrivals_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        run([Arrival(1.0, 100, 2), Arrival(0.5, 100, 2)])


class StepScaler:
    """Three replicas from t=10 s, one again from t=40 s."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def desired_replicas(self, now_s: float, replicas: Sequence[ReplicaView]) -> int:
        self.calls.append((now_s, len(replicas)))
        return 3 if 10 <= now_s < 40 else 1


def test_the_autoscaler_adds_replicas_after_startup_and_drains_them() -> None:
    scaler = StepScaler()
    config = FleetConfig(replicas=1, core=CoreConfig(), autoscale_interval_s=10.0, startup_s=5.0)
    arrivals = steady(140, 0.5, output=20)
    result = simulate(arrivals, MODEL, GPU, config, make_router("round_robin"), scaler)
    by_time = {(r.arrival_s, r.replica) for r in result.records}
    assert {replica for arrival_s, replica in by_time if arrival_s < 15} == {0}
    assert {replica for arrival_s, replica in by_time if 15 <= arrival_s < 40} == {0, 1, 2}
    assert {replica for arrival_s, replica in by_time if arrival_s >= 41} == {0}
    assert (10.0, 1) in scaler.calls and (40.0, 3) in scaler.calls and (50.0, 1) in scaler.calls
    assert result.totals.peak_replicas == 3 and result.totals.completed == 140
    # the added replicas held their GPUs from t=10 until drained shortly after t=40
    added_s = result.totals.replica_s - result.totals.makespan_s
    assert 2 * 30 <= added_s < 2 * 32


def test_unknown_router_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: least_kv"):
        make_router("fastest")


@pytest.mark.parametrize("window_s", [0.0, 0.004, 0.05, 0.33, 1.7, math.inf])
@pytest.mark.parametrize(("batch", "context"), [(1, 800), (7, 7 * 3000), (64, 64 * 12_000)])
def test_decode_runs_cut_at_an_arrival_match_the_stepwise_sum(
    batch: int, context: int, window_s: float
) -> None:
    """The fleet leans on the closed form that `EngineCore.decode_run` uses between arrivals."""
    perf = PerfModel(MODEL, GPU)
    for steps in (2, 3, 50, 400):
        closed = _decode_span(perf, batch, context, steps, 10.0, 10.0 + window_s)
        stepwise = _decode_span_stepwise(perf, batch, context, steps, 10.0, 10.0 + window_s)
        assert closed[0] == stepwise[0] and closed[1] == pytest.approx(stepwise[1], rel=1e-12)


# --- the gateway's admission gate in front of the fleet ----------------------------------------------


def gated(arrivals: Sequence[Arrival], gate: GatewayGate, router: Router | None = None) -> FleetResult:
    config = FleetConfig(replicas=2, gate=gate)
    return simulate(arrivals, MODEL, GPU, config, router or make_router("least_outstanding"))


def test_the_gate_queues_past_its_capacity_and_routes_as_slots_free() -> None:
    burst = [Arrival(0.0, 2000, 50, (i,)) for i in range(10)]
    result = gated(burst, GatewayGate(max_in_flight=2))
    assert result.totals.completed == 10
    waited = [r for r in result.records if r.routed_s is not None and r.routed_s > r.arrival_s]
    assert len(waited) == 6  # 2 replicas x 2 slots went at once, the rest when earlier ones finished
    first_done = min(r.finish_s for r in result.records if r.finish_s is not None)
    assert all(r.routed_s is not None and r.routed_s >= first_done for r in waited)


def test_a_full_gateway_queue_answers_429_and_a_long_wait_503() -> None:
    burst = [Arrival(0.0, 4000, 400, (i,)) for i in range(8)]
    full = gated(burst, GatewayGate(max_in_flight=1, max_queue=3))
    assert Counter(r.status for r in full.records) == {200: 5, 429: 3}
    assert all("queue is full" in (r.error or "") for r in full.records if r.status == 429)

    impatient = gated(burst, GatewayGate(max_in_flight=1, max_wait_s=0.5))
    statuses = Counter(r.status for r in impatient.records)
    assert statuses[503] > 0 and statuses[200] >= 2 and statuses[200] + statuses[503] == 8
    assert all(r.replica is None for r in impatient.records if r.status == 503)  # never sent, never lost


class _Refuses:
    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int | None:
        return None if int(request.request_id) % 2 else 0


def test_a_router_that_refuses_gives_503_and_the_rest_still_run() -> None:
    result = gated(steady(6, 0.1), GatewayGate(max_in_flight=8), _Refuses())
    assert [r.status for r in result.records] == [200, 503] * 3
    assert result.totals.completed == 3 and result.totals.failed == 3


def test_a_bad_gate_is_refused_with_its_fields() -> None:
    with pytest.raises(ValueError, match="max_in_flight >= 1"):
        GatewayGate(max_in_flight=0)
    with pytest.raises(ValueError, match='max_in_flight >= 1 \\(or "auto"\\)'):
        GatewayGate(max_in_flight="many")  # type: ignore[arg-type]


def most_in_flight(records: Sequence[RequestRecord]) -> int:
    changes = sorted(
        [(r.routed_s, 1) for r in records if r.routed_s is not None]
        + [(r.finish_s, -1) for r in records if r.finish_s is not None]
    )  # at one instant a finish (-1) sorts before a start: its slot is free again
    return max(itertools.accumulate(delta for _, delta in changes))


def test_an_auto_gate_admits_what_each_replicas_kv_cache_holds() -> None:
    """200 blocks of 16 tokens per replica over requests of 700 + 100 tokens: 4 each, 8 in all. Until
    a request has finished there is no typical size: the default per replica holds."""
    core = CoreConfig(num_gpu_blocks_override=200)
    config = FleetConfig(replicas=2, core=core, gate=GatewayGate(max_in_flight="auto"))
    fleet = Fleet(MODEL, GPU, config, make_router("least_outstanding"))
    assert fleet.gate_capacity == 2 * DEFAULT_PER_REPLICA
    warm = [Arrival(0.0, 700, 100, (i,)) for i in range(3)]
    burst = [Arrival(100.0, 700, 100, (100 + i,)) for i in range(30)]
    result = fleet.run([*warm, *burst])
    assert fleet.gate_capacity == 2 * (200 * 16 // 800)
    assert result.totals.completed == 33
    later = result.records[3:]
    assert sum(r.routed_s == r.arrival_s for r in later) == 8  # the rest waited at the gate for a slot
    assert most_in_flight(later) == 8

    fixed = simulate(
        [*warm, *burst],
        MODEL,
        GPU,
        FleetConfig(replicas=2, core=core, gate=GatewayGate(64)),
        make_router("least_outstanding"),
    )
    assert most_in_flight(fixed.records[3:]) == 30  # a number admits the whole burst onto the engines
