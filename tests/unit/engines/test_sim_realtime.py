"""The sim driven by its engine core in real time: prefix caching, preemption and the driver's pacing.

Timing is asserted only as ratios and orderings with wide margins, never as absolute values.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sim_testkit import MODEL, SimClientFactory, chat_body, scrape

LONG_PROMPT = " ".join(f"fact{i} is known." for i in range(1000))  # 4000 tokens


async def _ttft_of_next_request(
    sim: httpx.AsyncClient, body: dict[str, object]
) -> tuple[float, dict[str, object]]:
    before = (await scrape(sim)).get("vllm:time_to_first_token_seconds_sum", 0.0)
    response = await sim.post("/v1/completions", json=body)
    assert response.status_code == 200
    after = (await scrape(sim))["vllm:time_to_first_token_seconds_sum"]
    return after - before, response.json()["usage"]


async def test_repeated_prompt_hits_the_prefix_cache_and_starts_sooner(make_sim: SimClientFactory) -> None:
    sim = await make_sim(time_scale=5)  # a 4000-token prefill is ~0.1 s on the simulated H100
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 2}
    cold_ttft, cold_usage = await _ttft_of_next_request(sim, body)
    cold = await scrape(sim)
    assert cold["vllm:prefix_cache_queries_total"] == 4000
    assert cold["vllm:prefix_cache_hits_total"] == 0
    assert "prompt_tokens_details" not in cold_usage

    warm_ttft, warm_usage = await _ttft_of_next_request(sim, body)
    warm = await scrape(sim)
    assert warm["vllm:prefix_cache_queries_total"] == 8000
    hits = warm["vllm:prefix_cache_hits_total"]
    assert 4000 - 16 <= hits < 4000  # every full block but the one holding the last prompt token
    assert warm_usage["prompt_tokens_details"] == {"cached_tokens": hits}
    assert warm_ttft < cold_ttft * 0.5


async def test_prefix_caching_can_be_turned_off(make_sim: SimClientFactory) -> None:
    sim = await make_sim(enable_prefix_caching=False)
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 1}
    for _ in range(2):
        assert (await sim.post("/v1/completions", json=body)).status_code == 200
    assert (await scrape(sim)).get("vllm:prefix_cache_hits_total", 0) == 0


async def test_reset_prefix_cache_forgets_cached_blocks(make_sim: SimClientFactory) -> None:
    sim = await make_sim()
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 1}
    await sim.post("/v1/completions", json=body)
    assert (await sim.post("/reset_prefix_cache")).json() == {"reset": True}
    usage = (await sim.post("/v1/completions", json=body)).json()["usage"]
    assert "prompt_tokens_details" not in usage


async def test_a_full_kv_cache_preempts_and_everyone_still_finishes(make_sim: SimClientFactory) -> None:
    sim = await make_sim(num_gpu_blocks_override=8, block_size=16)  # 128 tokens of KV in all
    prompts = [" ".join(f"w{i}x{j}" for j in range(40)) for i in range(3)]
    bodies = [{"model": MODEL, "prompt": prompt, "max_tokens": 40} for prompt in prompts]
    responses = await asyncio.gather(*(sim.post("/v1/completions", json=body) for body in bodies))
    assert [response.json()["usage"]["completion_tokens"] for response in responses] == [40, 40, 40]
    metrics = await scrape(sim)
    assert metrics["vllm:num_preemptions_total"] >= 1
    assert metrics["vllm:kv_cache_usage_perc"] == 0


async def test_batched_requests_share_steps(make_sim: SimClientFactory) -> None:
    sim = await make_sim()
    await asyncio.gather(*(sim.post("/v1/chat/completions", json=chat_body(max_tokens=30)) for _ in range(8)))
    stats = (await sim.get("/sim/stats")).json()
    assert stats["steps"] < 8 * 30 / 2  # decoding together, not one request after another
    assert stats["steps"] == stats["core_steps"]


async def test_driver_never_runs_ahead_of_the_model(make_sim: SimClientFactory) -> None:
    sim = await make_sim(time_scale=20)
    await asyncio.gather(*(sim.post("/v1/chat/completions", json=chat_body(max_tokens=20)) for _ in range(4)))
    stats = (await sim.get("/sim/stats")).json()
    assert stats["steps"] >= 20 and stats["planned_s"] > 0
    assert stats["actual_s"] >= stats["planned_s"] - 1e-3  # deliveries wait for absolute targets
    assert stats["planned_s"] * 20 == pytest.approx(stats["model_busy_s"])
    lag = await scrape(sim)
    assert lag["computenet_sim_step_lag_seconds_count"] == stats["steps"]


async def test_time_scale_speeds_everything_up_alike(make_sim: SimClientFactory) -> None:
    slow, fast = await make_sim(time_scale=2), await make_sim(time_scale=40)
    for sim in (slow, fast):
        await sim.post("/v1/chat/completions", json=chat_body(max_tokens=20))
    slow_e2e = (await scrape(slow))["vllm:e2e_request_latency_seconds_sum"]
    fast_e2e = (await scrape(fast))["vllm:e2e_request_latency_seconds_sum"]
    assert fast_e2e < slow_e2e / 4  # 20x in theory; a loaded machine only ever adds to the fast one
