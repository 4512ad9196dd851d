"""The routing pipeline's policies, one by one, on endpoints whose state the test sets.

Each test builds what the gateway would know (in-flight counts, engine scrapes,
prefix indexes) and checks where the next request goes, as an operator would see it
in `x-computenet-replica`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from computenet.api import Endpoint, PolicySpec
from computenet.engines.base import EngineLoad
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.gateway import EndpointRegistry, Gateway, GatewayApp
from computenet.gateway.routing.hashers import engine_block_hashes
from computenet.gateway.routing.kv_index import KVBlockIndex
from computenet.gateway.routing.pipeline import (
    EngineHasher,
    PromptBlocks,
    RoutingRequest,
    RoutingState,
    Snapshot,
)
from computenet.gateway.routing.prefix import ApproxPrefixIndex, text_block_hashes
from computenet.gateway.routing.presets import PRESETS, build_pipeline
from computenet.gateway.routing.scorers import SCORERS
from computenet.pools.processes import free_ports

from ..servers import serve
from .test_forwarding import CHAT, gateway_with, sim, upstream


@dataclass(frozen=True)
class Ep:
    replica: str
    region: str = "eu"
    engine: str = "sim"


EPS = [Ep("a"), Ep("b"), Ep("c"), Ep("d")]


def req(content: object = "hi", **kw: object) -> RoutingRequest:
    return RoutingRequest(model="m", content=content, **kw)  # type: ignore[arg-type]


def route(
    policy: object, state: RoutingState, request: RoutingRequest | None = None, eps: Sequence[Ep] = EPS
) -> str:
    pipeline = build_pipeline(PolicySpec.model_validate(policy))
    request = request or req()
    chosen = pipeline.pick(request, eps, state)
    assert chosen is not None
    pipeline.routed(request, chosen, state)
    return chosen.replica


def scrape(state: RoutingState, replica: str, **load: float) -> None:
    state.board.record_scrape(replica, EngineLoad(**load))  # type: ignore[arg-type]


def test_every_preset_builds_and_picks() -> None:
    for name in PRESETS:
        assert route(name, RoutingState()) in {"a", "b", "c", "d"}


def test_random_spreads_and_round_robin_takes_turns() -> None:
    state = RoutingState(rng=random.Random(1))
    spread = Counter(route("random", state) for _ in range(400))
    assert set(spread) == {"a", "b", "c", "d"} and min(spread.values()) > 60
    pipeline, picks = build_pipeline("round-robin"), []
    for _ in range(8):
        request = req()
        chosen = pipeline.pick(request, EPS, state)
        assert chosen is not None
        pipeline.routed(request, chosen, state)
        picks.append(chosen.replica)
    assert picks == ["a", "b", "c", "d"] * 2


def test_power_of_two_never_picks_the_busiest() -> None:
    state = RoutingState(rng=random.Random(2))
    for replica, busy in zip("abcd", (9, 1, 2, 3), strict=True):
        for _ in range(busy):
            state.board.acquire(replica)
    picks = Counter(route("power-of-two", state) for _ in range(300))
    assert "a" not in picks and picks["b"] > picks["d"]


def test_a_scorer_with_no_opinion_drops_out_and_the_others_decide() -> None:
    """No session pinned, no region asked for, no LoRA adapter anywhere, nothing indexed: those scorers
    say nothing (an empty list) rather than add the same number to every candidate."""
    state = RoutingState(kv=KVBlockIndex(), hasher=hashing([1, 2]))
    for replica in "abcd":
        scrape(state, replica, max_lora=2)  # type: ignore[arg-type]
    for replica in "abd":
        state.board.acquire(replica)
    snap = Snapshot.of(EPS, state.board)
    request = req(session="new")
    for name in ("session", "region", "lora", "precise-prefix"):
        assert SCORERS[name]().score(request, snap, state) == [], name
    assert SCORERS["prefix"]().score(req("short"), snap, state) == []  # under one block of text
    policy = {"scorers": [{"name": n} for n in ("session", "region", "lora", "prefix", "least-request")]}
    assert {route(policy, state, req(session=f"s{i}")) for i in range(10)} == {"c"}


def test_the_board_reads_counts_and_fresh_figures_together() -> None:
    clock = [0.0]
    state = RoutingState()
    state.board.clock = lambda: clock[0]
    scrape(state, "a", waiting=3)
    clock[0] = 1.0
    scrape(state, "b", waiting=1)
    state.board.acquire("b")
    clock[0] = 2.5  # a's scrape is 2.5 s old: stale; b's 1.5 s: fresh
    in_flight, engines, signals = state.board.read(["a", "b", "never-seen"])
    assert in_flight == [0, 1, 0] and signals == [state.board.get("a"), state.board.get("b"), None]
    assert [e.waiting if e is not None else None for e in engines] == [None, 1, None]
    assert state.board.in_flight(["b"]) == [1] and state.board.engines(["a"]) == [None]
    assert state.board.get("never-seen") is None  # reading does not add replicas


def test_queue_reads_the_engines_waiting_requests_and_falls_back_on_own_counts_when_stale() -> None:
    clock = [0.0]
    state = RoutingState()
    state.board.clock = lambda: clock[0]
    for replica, waiting in zip("abcd", (5, 0, 7, 3), strict=True):
        scrape(state, replica, waiting=waiting)
    state.board.acquire("b")  # this gateway's own count says b is busy, the engine says idle
    assert route({"scorers": [{"name": "queue"}]}, state) == "b"
    clock[0] = 10.0  # every scrape is stale now: only the gateway's own counts are left
    assert route({"scorers": [{"name": "queue"}]}, state) != "b"


def test_kv_usage_prefers_free_cache() -> None:
    state = RoutingState()
    for replica, usage in zip("abcd", (0.9, 0.95, 0.2, 0.6), strict=True):
        scrape(state, replica, kv_cache_usage=usage)
    assert route({"scorers": [{"name": "kv-usage"}]}, state) == "c"


def test_saturation_gate_skips_full_endpoints_and_refuses_when_all_are() -> None:
    state = RoutingState()
    policy = {"filters": [{"name": "saturation", "maxWaiting": 4, "maxKvUsage": 0.9}], "scorers": []}
    for replica in "abc":
        scrape(state, replica, waiting=10)
    scrape(state, "d", waiting=0, kv_cache_usage=0.5)
    assert {route(policy, state) for _ in range(10)} == {"d"}
    scrape(state, "d", waiting=0, kv_cache_usage=0.95)
    assert build_pipeline(PolicySpec.model_validate(policy)).pick(req(), EPS, state) is None


def test_region_prefers_the_asked_region_and_spills_over() -> None:
    eps = [Ep("a", "us"), Ep("b", "eu"), Ep("c", "eu")]
    state = RoutingState()
    policy = {"filters": [{"name": "region", "region": "eu"}], "scorers": [{"name": "least-request"}]}
    assert {route(policy, state, eps=eps) for _ in range(20)} == {"b", "c"}
    assert route(policy, state, req(region="us"), eps) == "a"  # the request's header wins
    assert route(policy, state, req(region="ap"), eps) in {"a", "b", "c"}  # nothing there: spill over
    strict = {"filters": [{"name": "region", "region": "ap", "spill": False}]}
    assert build_pipeline(PolicySpec.model_validate(strict)).pick(req(), eps, state) is None


def test_a_gateway_in_a_region_stays_there_until_its_replicas_are_full() -> None:
    eps = [Ep("home-1", "us"), Ep("home-2", "us"), Ep("away", "eu")]
    state = RoutingState()
    pipeline = build_pipeline("least-request", region="us")  # what a gateway started with --region us does
    assert {pipeline.pick(req(), eps, state).replica for _ in range(20)} == {"home-1", "home-2"}  # type: ignore[union-attr]
    scrape(state, "home-1", waiting=40, kv_cache_usage=0.5)  # queueing: past the spill threshold
    assert {pipeline.pick(req(), eps, state).replica for _ in range(20)} == {"home-2"}  # type: ignore[union-attr]
    scrape(state, "home-2", waiting=0, kv_cache_usage=0.99)  # KV cache full
    assert pipeline.pick(req(), eps, state).replica == "away"  # type: ignore[union-attr]
    assert pipeline.pick(req(), eps[:2], state) is not None  # nowhere to spill: home still serves
    assert build_pipeline("least-request").pick(req(), eps, state) is not None  # no region: no filter


def test_session_affinity_keeps_a_conversation_on_one_endpoint() -> None:
    state = RoutingState(rng=random.Random(3))
    policy = {"scorers": [{"name": "session", "weight": 2}, {"name": "least-request"}]}
    first = route(policy, state, req(session="alice"))
    state.board.acquire(first)  # even a little busier than the rest
    assert {route(policy, state, req(session="alice")) for _ in range(10)} == {first}
    assert len({route(policy, state, req(session=f"s{i}")) for i in range(20)}) > 1


def test_lora_affinity_prefers_the_adapter_that_is_loaded_then_a_free_slot() -> None:
    state = RoutingState()
    scrape(state, "a", max_lora=2, lora_adapters=frozenset({"x", "y"}))  # type: ignore[arg-type]
    scrape(state, "b", max_lora=2, lora_adapters=frozenset({"sql"}))  # type: ignore[arg-type]
    scrape(state, "c", max_lora=2, lora_adapters=frozenset())  # type: ignore[arg-type]
    scrape(state, "d", max_lora=1, lora_adapters=frozenset({"z"}))  # type: ignore[arg-type]
    policy = {"scorers": [{"name": "lora"}]}
    sql = RoutingRequest(
        model="sql",
    )
    assert route(policy, state, sql) == "b"
    other = RoutingRequest(
        model="new-adapter",
    )
    assert {route(policy, state, other) for _ in range(20)} == {"b", "c"}  # a and d have no free slot


def test_lora_affinity_follows_adapters_as_they_come_and_go() -> None:
    """The board counts adapters and full replicas as scrapes replace each other, so a fleet with
    no adapter running and free slots everywhere is told apart without scoring each replica, and
    an adapter that is unloaded (or a replica that is forgotten) stops drawing requests."""
    state = RoutingState(rng=random.Random(1))
    policy = {"scorers": [{"name": "lora"}, {"name": "least-request", "weight": 0.1}]}
    for replica in "abcd":
        scrape(state, replica, max_lora=2)  # type: ignore[arg-type]
    state.board.acquire("a")
    assert {route(policy, state, req()) for _ in range(10)} == {"b", "c", "d"}  # LoRA says nothing
    scrape(state, "a", max_lora=2, lora_adapters=frozenset({"m"}))  # type: ignore[arg-type]
    assert {route(policy, state, req()) for _ in range(10)} == {"a"} and state.board.lora_matters("m")
    scrape(state, "a", max_lora=2)  # type: ignore[arg-type]  # unloaded again
    assert {route(policy, state, req()) for _ in range(10)} == {"b", "c", "d"}
    assert not state.board.lora_matters("m")
    scrape(state, "d", max_lora=1, lora_adapters=frozenset({"z"}))  # type: ignore[arg-type]  # d is full
    assert {route(policy, state, req()) for _ in range(10)} == {"b", "c"}
    state.board.forget({"a", "b", "c"})
    assert {route(policy, state, req(), eps=EPS[:3]) for _ in range(10)} == {"b", "c"}
    assert state.board.lora_matters("m") is False  # d's full slots left with d


def test_a_candidate_tuple_is_read_once_and_a_new_one_afresh() -> None:
    """The forwarder hands every request the same tuple of a route's upstreams: its replica keys and
    engine are worked out once. A new tuple (the registry changed) is read afresh."""
    state = RoutingState()
    sims = (Ep("a"), Ep("b"))
    assert state.roster(sims) is state.roster(sims) and state.roster(sims).kind == "sim"
    mixed = (Ep("a"), Ep("c", engine="vllm"))
    assert state.roster(mixed).kind is None and state.roster(mixed).replicas == ("a", "c")
    assert state.roster(list(sims)) is not state.roster(list(sims))  # a list may change: never kept
    snap = Snapshot.of(mixed, state.board, state.roster(mixed))
    assert snap.engine_kind() is None and snap.keep([True, False]).engine_kind() == "sim"


LONG = [{"role": "system", "content": "You are a careful assistant. " * 40}, {"role": "user", "content": "q"}]


def test_approximate_prefix_follows_the_prompts_this_gateway_sent() -> None:
    state = RoutingState(rng=random.Random(4))
    first = route("prefix", state, req(LONG))
    again = [route("prefix", state, req([LONG[0], {"role": "user", "content": f"q{i}"}])) for i in range(5)]
    assert set(again) == {first}


def test_approximate_index_forgets_the_least_recently_used_blocks() -> None:
    index = ApproxPrefixIndex(capacity_blocks=4)
    index.record("a", [1, 2, 3])
    index.record("a", [1, 9, 10])  # 1 is used again; 3, the tail of the older prompt, is now the oldest
    assert index.blocks("a") == 4 and index.match([1, 2, 3]) == {"a": 2}
    index.record("b", [1, 2])
    assert index.match([1, 2, 3]) == {"a": 2, "b": 2}
    index.forget("a")
    assert index.match([1, 9]) == {"b": 1}


def test_approximate_index_trims_a_prompt_from_its_tail() -> None:
    """A prompt longer than the budget keeps its head: trimming its first block instead would leave
    every block after it unmatched (a match stops at the first block missing)."""
    index = ApproxPrefixIndex(capacity_blocks=4)
    index.record("a", [1, 2, 3, 4, 5, 6])
    assert index.blocks("a") == 4 and index.match([1, 2, 3, 4, 5, 6]) == {"a": 4}


def test_text_blocks_share_a_prefix_exactly_when_the_prompts_do() -> None:
    one = text_block_hashes(LONG)
    two = text_block_hashes([LONG[0], {"role": "user", "content": "something else entirely " * 10}])
    assert len(one) > 10 and one[:10] == two[:10] and one[-1] != two[-1]
    assert text_block_hashes("short") == []


def test_an_empty_approximate_index_gives_the_prompts_length_without_hashing_it() -> None:
    """The default preset without KV events asks only how long the prompt is; once the `prefix`
    scorer has filled the index, prompts are hashed and matched again."""
    state = RoutingState()
    request = RoutingRequest("m", content=LONG)
    assert state.text_held(request) == ({}, len(text_block_hashes(LONG)))
    assert request.text_blocks is None  # nothing was hashed
    state.approx.record("a", text_block_hashes(LONG[:1]))
    again = RoutingRequest("m", content=LONG)
    assert state.text_held(again) == ({"a": len(text_block_hashes(LONG[:1]))}, len(text_block_hashes(LONG)))


class Matcher:
    def __init__(self, held: dict[str, int]) -> None:
        self.held = held
        self.walks = 0

    def match(self, block_hashes: Sequence[Hashable]) -> dict[str, int]:
        self.walks += 1
        return {r: min(n, len(block_hashes)) for r, n in self.held.items()}

    def __contains__(self, block_hash: object) -> bool:
        return True


def hashing(blocks: Sequence[Hashable]) -> EngineHasher:
    """A hasher that gives every request these blocks."""
    return lambda request, engine, known: PromptBlocks(blocks, len(blocks))


def test_each_index_is_walked_once_per_pick_however_many_scorers_ask() -> None:
    kv = Matcher({"a": 90, "b": 10})
    state = RoutingState(kv=kv, hasher=hashing(list(range(100))))
    state.approx.record("c", text_block_hashes(LONG))
    walks = Counter[str]()
    approx_match = state.approx.match

    def counted(blocks: Sequence[Hashable]) -> dict[str, int]:
        walks["approx"] += 1
        return approx_match(blocks)

    state.approx.match = counted  # type: ignore[method-assign]
    scorers = [{"name": n} for n in ("precise-prefix", "prefill-load", "prefix", "queue")]
    pipeline = build_pipeline(PolicySpec.model_validate({"scorers": scorers}))
    request = req(LONG)
    assert pipeline.pick(request, EPS, state) is not None
    assert (kv.walks, walks["approx"]) == (1, 1)
    assert pipeline.pick(request, EPS, state) is not None  # a retry: the indexes may have moved on
    assert (kv.walks, walks["approx"]) == (2, 2)


def test_precise_prefix_follows_the_engines_cache_but_not_into_a_queue() -> None:
    blocks = list(range(100))
    state = RoutingState(kv=Matcher({"a": 90, "b": 10}), hasher=hashing(blocks))
    assert route("precise-prefix", state, req()) == "a"
    for replica, waiting in zip("abcd", (40, 0, 0, 0), strict=True):
        scrape(state, replica, waiting=waiting, kv_cache_usage=0.99 if replica == "a" else 0.1)
    for _ in range(30):
        state.board.acquire("a")
    assert route("precise-prefix", state, req()) != "a"  # its cache is not worth that queue


def test_precise_prefix_without_kv_events_is_load_aware() -> None:
    """No KV events and no scrapes (a plain OpenAI server): it spreads by the prompts it sent."""
    state = RoutingState(rng=random.Random(5))
    prompt = "x" * 640  # ten text blocks, ~160 tokens
    assert sorted(route("precise-prefix", state, req(prompt)) for _ in range(4)) == list("abcd")
    assert [state.board.of(r).prefill_tokens for r in "abcd"] == [160] * 4


def test_prefill_load_prices_a_cached_prefix_against_the_queue_in_front_of_it() -> None:
    """a holds 90 of the prompt's 100 blocks: worth going to until the prefill queued there
    costs more tokens than the hit saves (1,440 of 1,600)."""
    blocks = list(range(100))
    policy = {"scorers": [{"name": "prefill-load"}]}
    state = RoutingState(kv=Matcher({"a": 90}), hasher=hashing(blocks))
    state.board.begin_prefill("a", 1200)
    assert route(policy, state, req()) == "a"  # 1,200 + 160 < 1,600
    state.board.begin_prefill("a", 400)  # and the first request's 160 are charged there too
    assert route(policy, state, req()) != "a"
    state.board.end_prefill("a", 1200)  # first tokens came back
    state.board.end_prefill("a", 400)
    assert route(policy, state, req()) == "a"


def test_prefill_load_counts_other_gateways_queue_from_the_engine() -> None:
    blocks = list(range(100))
    policy = {"scorers": [{"name": "prefill-load"}]}
    state = RoutingState(kv=Matcher({"a": 90}), hasher=hashing(blocks))
    scrape(state, "a", waiting=2)  # two requests this gateway did not send, ~1,600 tokens each
    for replica in "bcd":
        scrape(state, replica, waiting=0)
    assert route(policy, state, req()) != "a"


def test_prefill_load_scores_as_its_formula_says_on_random_states() -> None:
    """Uncached prompt tokens plus the prefill queued ahead: this gateway's own, and the engine's
    other waiting requests at the typical request's tokens (none known: this prompt's)."""
    rng = random.Random(11)
    eps = [Ep(f"r{i}") for i in range(12)]
    for _ in range(50):
        held = {e.replica: rng.randrange(0, 9) for e in eps if rng.random() < 0.7}
        state = RoutingState(kv=Matcher(held), hasher=hashing(list(range(8))))
        for e in eps:
            if rng.random() < 0.8:
                scrape(state, e.replica, waiting=rng.randrange(4))
            if rng.random() < 0.5:
                state.board.begin_prefill(e.replica, rng.randrange(1, 500))
        scorer = SCORERS["prefill-load"]()
        scorer.typical_tokens = rng.choice([0.0, 90.0])
        snap = Snapshot.of(eps, state.board)
        typical = scorer.typical_tokens or 8 * 16
        work = []
        for e, engine in zip(eps, snap.engines, strict=True):
            own = state.board.get(e.replica)
            tokens, prefilling = (own.prefill_tokens, own.prefilling) if own else (0, 0)
            queued = max(0.0, engine.waiting - prefilling) if engine is not None else 0.0
            work.append(16 * (8 - min(held.get(e.replica, 0), 8)) + tokens + queued * typical)
        low, high = min(work), max(work)
        expected = [(high - w) / (high - low) if high > low else 1.0 for w in work]
        assert scorer.score(req(), snap, state) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("fastest", "preset"),
        ({"scorers": [{"name": "prefx"}]}, "scorers.0.name"),
        ({"filters": [{"name": "saturation", "region": "x"}]}, "takes maxInFlight, maxKvUsage, maxWaiting"),
        ({"scorers": [{"name": "queue", "region": "x"}]}, "only the `region` scorer does"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(policy: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicySpec.model_validate(policy)


async def test_through_the_gateway_a_session_and_a_shared_prompt_each_stay_on_one_replica() -> None:
    """Three real sim replicas behind the gateway: what an operator sees in x-computenet-replica."""
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(sim()) for _ in range(3)]
        session_policy = {"scorers": [{"name": "session", "weight": 2}, {"name": "least-request"}]}
        client, _ = await stack.enter_async_context(gateway_with(*urls, policy=session_policy))

        async def replica(body: dict[str, object], headers: dict[str, str] | None = None) -> str:
            resp = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert resp.status_code == 200
            return resp.headers["x-computenet-replica"]

        by_header = {await replica(CHAT, {"x-session-id": "alice"}) for _ in range(4)}
        by_user = {await replica({**CHAT, "user": "bob"}) for _ in range(4)}
        assert len(by_header) == 1 and len(by_user) == 1
        spread = {await replica({**CHAT, "user": f"u{i}"}) for i in range(9)}
        assert len(spread) > 1

    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(sim()) for _ in range(3)]
        client, _ = await stack.enter_async_context(gateway_with(*urls, policy="prefix"))
        shared = [
            await replica_of(client, {**CHAT, "messages": [LONG[0], {"role": "user", "content": f"q{i}"}]})
            for i in range(5)
        ]
        assert len(set(shared)) == 1


async def replica_of(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    return resp.headers["x-computenet-replica"]


async def test_precise_prefix_sends_a_shared_prompt_to_the_replica_whose_engine_reported_it() -> None:
    """Three sim replicas publishing vLLM-format KV events over ZMQ; the gateway subscribes to each
    and routes prompts that share a long system prompt to the replica that holds its blocks."""
    async with contextlib.AsyncExitStack() as stack:
        endpoints = []
        for i in range(3):
            events, replay = (f"tcp://127.0.0.1:{port}" for port in free_ports(2))  # two at once: never equal
            config = SimConfig(
                model="m", time_scale=50, kv_events_endpoint=events, kv_events_replay_endpoint=replay
            )
            app = create_sim_app(config)
            await stack.enter_async_context(app.router.lifespan_context(app))
            url = await stack.enter_async_context(serve(app))
            endpoints.append(Endpoint(f"r{i}", "d", "m", url, kv_events=events, kv_events_replay=replay))
        registry = EndpointRegistry()
        await registry.publish("d", endpoints, model="m", policy="precise-prefix")
        gateway = Gateway(registry)
        await gateway.start()
        stack.push_async_callback(gateway.close)
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=await stack.enter_async_context(serve(GatewayApp(gateway))), timeout=10
            )
        )

        def chat(question: str) -> dict[str, object]:
            return {**CHAT, "messages": [LONG[0], {"role": "user", "content": question}]}

        first = await replica_of(client, chat("q0"))
        blocks = engine_block_hashes(RoutingRequest("m", content=chat("q0")["messages"]), "sim").hashes  # type: ignore[union-attr]
        assert blocks
        async with asyncio.timeout(5):  # the engine's events reach the gateway's index
            while gateway.kv_index.match(blocks).get(first, 0) < len(blocks) // 2:
                await asyncio.sleep(0.02)
        assert {await replica_of(client, chat(f"q{i}")) for i in range(1, 6)} == {first}
        assert set(gateway.feeds.kv_events.tracked()) == {"r0", "r1", "r2"}  # type: ignore[union-attr]


async def test_a_saturated_deployment_answers_503_saying_so_and_recovers() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    policy = {"filters": [{"name": "saturation", "maxInFlight": 1}]}
    async with upstream(slow) as url, gateway_with(url, policy=policy) as (client, gateway):
        held = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        async with asyncio.timeout(5):
            while not gateway.routing.board.outstanding("r0"):
                await asyncio.sleep(0.01)
        refused = await client.post("/v1/chat/completions", json=CHAT)
        release.set()
        assert (await held).status_code == 200
        after = await client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "is saturated" in refused.json()["error"]["message"]
    assert after.status_code == 200


async def test_the_gateway_charges_a_prompts_prefill_until_its_first_token_comes_back() -> None:
    """Two upstreams that stream on cue: the prompt's tokens count against the replica that took it
    from the moment it is sent until its first chunk arrives, not until the stream ends."""
    go_first, finish = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await go_first.wait()
        chunk = {"choices": [{"index": 0, "delta": {"content": "x"}}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await finish.wait()
        await resp.write(b"data: [DONE]\n\n")
        return resp

    policy = {"scorers": [{"name": "prefill-load"}]}
    async with (
        upstream(handler) as a,
        upstream(handler) as b,
        gateway_with(a, b, policy=policy) as (
            client,
            gateway,
        ),
    ):
        body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "y" * 640}]}
        board = gateway.routing.board

        def charged() -> int:
            return sum(board.of(r).prefill_tokens for r in ("r0", "r1"))

        async def call() -> str:
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                assert charged() == 0  # the first chunk is here: its prefill is done
                finish.set()
                return "".join([line async for line in resp.aiter_lines()])

        task = asyncio.create_task(call())
        async with asyncio.timeout(5):
            while charged() == 0:
                await asyncio.sleep(0.01)
        assert charged() > 100  # ~10 text blocks of ~16 tokens, on the replica that took it
        go_first.set()
        assert "[DONE]" in await task
