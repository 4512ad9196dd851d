"""Continuous batching as vLLM v1 does it: budgets, chunked prefill, decode first, preemption, prefix hits."""

from __future__ import annotations

import pytest
from sim_drive import core, run, tokens

from computenet.engines.sim.core import CoreConfig
from computenet.engines.sim.kvcache import chain_hashes
from computenet.engines.sim.scheduler import Phase, SimRequest


def request(name: str, prompt: int, output: int, start: int = 0) -> SimRequest:
    ids = tokens(prompt, start)
    return SimRequest(name, prompt, output, chain_hashes(ids), prompt_token_ids=ids)


def test_a_long_prompt_is_prefilled_in_budget_sized_chunks() -> None:
    engine = core(CoreConfig(max_num_batched_tokens=100))
    long = request("long", 250, 4)
    engine.add(long)
    chunks = []
    while long.num_output == 0:
        engine.step(0.0)
        chunks.append(long.num_computed)
    assert chunks == [100, 200, 250]


def test_running_decodes_are_served_before_new_prefill() -> None:
    engine = core(CoreConfig(max_num_batched_tokens=100))
    decoders = [request(f"d{i}", 20, 50, start=1000 * i) for i in range(10)]
    for item in decoders:
        engine.add(item)
    while not all(item.num_output for item in decoders):
        engine.step(0.0)
    newcomer = request("new", 500, 4, start=99_000)
    engine.add(newcomer)
    engine.step(0.0)
    assert newcomer.num_computed == 90  # 100 budget minus one token per running decoder
    assert all(item.num_output >= 2 for item in decoders)


def test_max_num_seqs_caps_the_batch() -> None:
    engine = core(CoreConfig(max_num_seqs=3))
    for index in range(5):
        engine.add(request(str(index), 10, 20, start=100 * index))
    engine.step(0.0)
    assert (engine.num_running, engine.num_waiting) == (3, 2)


def test_kv_exhaustion_preempts_the_newest_and_recomputes_it() -> None:
    # 12 blocks of 16 tokens; two sequences that each grow to 112 tokens cannot both fit.
    engine = core(CoreConfig(num_gpu_blocks_override=12))
    first, second = request("first", 40, 72), request("second", 40, 72, start=500)
    run(engine, [first, second])
    assert engine.scheduler.preemptions > 0
    assert second.num_preemptions > 0 and first.num_preemptions == 0
    assert first.phase is second.phase is Phase.FINISHED
    assert (first.num_output, second.num_output) == (72, 72)
    assert first.finish_s is not None and second.finish_s is not None and first.finish_s < second.finish_s


def test_a_repeated_prompt_hits_the_prefix_cache_and_starts_sooner() -> None:
    engine = core()
    cold = request("cold", 2000, 2)
    run(engine, [cold])
    warm = request("warm", 2000, 2)
    warm.arrival_s = 0.0
    run(engine, [warm])
    assert cold.cached_tokens == 0
    assert warm.cached_tokens == (2000 - 1) // 16 * 16
    assert engine.kv.hit_tokens == warm.cached_tokens and engine.kv.query_tokens == 4000
    assert warm.first_token_s is not None and cold.first_token_s is not None
    assert warm.first_token_s < cold.first_token_s / 5


def test_without_prefix_caching_nothing_hits() -> None:
    engine = core(CoreConfig(enable_prefix_caching=False))
    run(engine, [request("a", 500, 2)])
    again = request("b", 500, 2)
    run(engine, [again])
    assert again.cached_tokens == 0 and engine.kv.hit_tokens == 0


def test_abort_frees_the_requests_blocks() -> None:
    engine = core()
    item = request("a", 300, 100)
    engine.add(item)
    engine.step(0.0)
    assert engine.kv.usage > 0
    engine.abort(item)
    assert engine.kv.usage == 0 and not engine.has_work and item.phase is Phase.ABORTED


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_decode_runs_match_single_steps_exactly(prefix_caching: bool) -> None:
    def batch() -> list[SimRequest]:
        return [request(str(i), 64 + 37 * i, 30 + 11 * i, start=10_000 * i) for i in range(12)]

    config = CoreConfig(num_gpu_blocks_override=60, enable_prefix_caching=prefix_caching)
    stepwise, coalesced = batch(), batch()
    slow, fast = core(config), core(config)
    assert run(slow, stepwise) == pytest.approx(run(fast, coalesced, fast=True), rel=1e-12)
    assert [r.finish_s for r in stepwise] == pytest.approx([r.finish_s for r in coalesced], rel=1e-12)
    assert fast.steps == slow.steps and slow.scheduler.preemptions == fast.scheduler.preemptions
