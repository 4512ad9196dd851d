"""The qualitative truths a faithful vLLM model must show, on the virtual clock.

The numbers the model is calibrated to live in benchmarks/sim_calibration.py and
docs/benchmarks.md; these tests only assert directions and rough proportions.
"""

from __future__ import annotations

import pytest
from sim_drive import CATALOG, core, run, tokens, ttft

from computenet.engines.sim.catalog import GpuSpec
from computenet.engines.sim.core import CoreConfig
from computenet.engines.sim.kvcache import chain_hashes
from computenet.engines.sim.perf import PerfConstants, PerfModel
from computenet.engines.sim.scheduler import SimRequest


def request(name: str, ids: list[int], output: int) -> SimRequest:
    return SimRequest(name, len(ids), output, chain_hashes(ids), prompt_token_ids=ids)


def test_ttft_grows_with_the_queue_ahead() -> None:
    queue = [request(str(i), tokens(2000, 10_000 * i), 8) for i in range(24)]
    run(core(), queue)
    waits = [ttft(item) for item in queue]
    assert waits == sorted(waits)
    assert waits[-1] > 4 * waits[0]  # 48k prompt tokens ahead, 8,192 per step: ~6 steps of prefill


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
def test_prefix_hits_cut_ttft_in_proportion_to_the_cached_share(share: float) -> None:
    prompt = 8192
    cold = request("cold", tokens(prompt), 1)
    engine = core()
    run(engine, [cold])
    cached = int(prompt * share)
    engine.kv.reset_prefix_cache()
    run(engine, [request("warmup", tokens(cached), 1)])
    warm = request("warm", [*tokens(cached), *tokens(prompt - cached, 1_000_000)], 1)
    run(engine, [warm])
    assert warm.cached_tokens == pytest.approx(cached, abs=16)
    assert ttft(warm) / ttft(cold) == pytest.approx(1 - share, abs=0.1)


def test_kv_exhaustion_preempts_and_throughput_collapses() -> None:
    def workload() -> list[SimRequest]:
        return [request(str(i), tokens(256, 10_000 * i), 512) for i in range(64)]

    roomy, tight = core(), core(CoreConfig(num_gpu_blocks_override=400))  # 6,400 tokens for 49,152
    roomy_batch, tight_batch = workload(), workload()
    roomy_s = run(roomy, roomy_batch, fast=True)
    tight_s = run(tight, tight_batch, fast=True)
    assert roomy.scheduler.preemptions == 0 and tight.scheduler.preemptions > 0
    assert all(item.num_output == 512 for item in tight_batch)
    assert tight_s > 3 * roomy_s  # same tokens, at least 3x the time


def test_a_gpu_twice_as_fast_halves_memory_bound_decode() -> None:
    h100 = CATALOG.gpu("H100")
    doubled = GpuSpec.model_validate(
        h100.model_dump()
        | {"id": "2xH100", "bf16_tflops": 2 * h100.bf16_tflops, "memory_t_bps": 2 * h100.memory_t_bps}
    )
    model = CATALOG.model("llama-3.1-8b")
    base, fast = PerfModel(model, h100), PerfModel(model, doubled)
    overhead = PerfConstants().step_overhead_s + 8 * PerfConstants().seq_overhead_s
    slow_gpu = base.decode_step_time(8, 8 * 1024) - overhead
    fast_gpu = fast.decode_step_time(8, 8 * 1024) - overhead
    assert slow_gpu / fast_gpu == pytest.approx(2.0, rel=1e-9)  # the GPU's share halves exactly
    ratio = base.decode_step_time(8, 8 * 1024) / fast.decode_step_time(8, 8 * 1024)
    assert 1.5 < ratio < 2.0  # the whole step nearly halves: the ~2 ms of CPU overhead per step does not


def test_decode_is_memory_bound_and_prefill_compute_bound() -> None:
    perf = PerfModel(CATALOG.model("llama-3.1-8b"), CATALOG.gpu("H100"))
    # Doubling the batch of a small decode barely moves the step; doubling a prefill doubles it.
    assert perf.decode_step_time(16, 16 * 512) / perf.decode_step_time(8, 8 * 512) < 1.2
    assert perf.prefill_step_time(4096) / perf.prefill_step_time(2048) == pytest.approx(2.0, rel=0.15)


def test_tensor_parallelism_speeds_up_and_frees_memory() -> None:
    model, gpu = CATALOG.model("llama-3.1-70b"), CATALOG.gpu("H100")
    tp2, tp4 = PerfModel(model, gpu, tp=2), PerfModel(model, gpu, tp=4)
    assert tp4.decode_step_time(8, 8 * 1024) < tp2.decode_step_time(8, 8 * 1024)
    assert tp4.kv_cache_blocks(0.9, 16) > 2 * tp2.kv_cache_blocks(0.9, 16)
    assert PerfModel(model, gpu, tp=1).kv_cache_blocks(0.9, 16) == 0  # 141 GB of weights on one 80 GB GPU


def test_a_moe_reads_fewer_weights_at_small_batches() -> None:
    moe = PerfModel(CATALOG.model("qwen3-30b-a3b"), CATALOG.gpu("H100"))
    assert moe.weight_read_s(1) < 0.2 * moe.weight_read_s(4096)
    dense = PerfModel(CATALOG.model("qwen2.5-32b"), CATALOG.gpu("H100"))
    assert moe.decode_step_time(1, 512) < dense.decode_step_time(1, 512) / 3
