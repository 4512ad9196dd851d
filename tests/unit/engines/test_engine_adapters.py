"""Adapters build the right command lines and read the right metric names."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from computenet.engines import EngineAdapter, EngineLoad, LaunchSpec, args_to_flags
from computenet.engines.metrics import MetricsParseError, SeriesReader, sample_sums, sample_values
from computenet.engines.sglang import SglangAdapter
from computenet.engines.sim import SimAdapter
from computenet.engines.sim.catalog import load_catalog
from computenet.engines.sim.core import CoreConfig, EngineCore
from computenet.engines.sim.metrics import SimMetrics, cache_config_info
from computenet.engines.vllm import VllmAdapter

# Trimmed from a vLLM v1 /metrics with two engine cores (data parallel 2).
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 3.0
vllm:num_requests_running{engine="1",model_name="qwen"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 1.0
vllm:num_requests_waiting{engine="1",model_name="qwen"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="qwen"} 0.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="qwen"} 1200.0
vllm:prompt_tokens_total{engine="1",model_name="qwen"} 800.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="qwen"} 340.0
vllm:generation_tokens_total{engine="1",model_name="qwen"} 60.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="qwen"} 7.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="qwen"} 5.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="qwen"} 7.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="qwen"} 7.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="qwen"} 0.9
"""

# vLLM before v0.10 named the KV gauge differently.
VLLM_V0_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 4.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="llama"} 0.875
"""

SGLANG_METRICS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen",tp_rank="0"} 6.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="qwen",tp_rank="0"} 2.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="qwen",tp_rank="0"} 0.42
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="qwen",tp_rank="0"} 5000.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="qwen",tp_rank="0"} 1500.0
"""

# vLLM v1 with --enable-lora --max-loras 4: the info gauge keeps every label set it was ever set
# to, valued with the time it was last set (`set_to_current_time`); label order is vLLM's.
VLLM_LORA_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 2.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""} 1.7472917215186226e+09
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,chat-lora",waiting_lora_adapters="tool-lora"} 1.7472917310123450e+09
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora",waiting_lora_adapters=""} 1.7472917298540623e+09
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="llama"} 4096.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{engine="0",model_name="llama"} 1.7472917101e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="llama"} 1024.0
# HELP vllm:gpu_prefix_cache_queries_total GPU prefix cache queries. DEPRECATED: Use vllm:prefix_cache_queries instead.
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{engine="0",model_name="llama"} 4096.0
# HELP vllm:gpu_prefix_cache_hits_total GPU prefix cache hits. DEPRECATED: Use vllm:prefix_cache_hits instead.
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{engine="0",model_name="llama"} 1024.0
"""

# vLLM 0.8 had only the `gpu_` spellings of the prefix-cache counters.
VLLM_OLD_PREFIX_METRICS = """\
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{model_name="llama"} 800.0
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{model_name="llama"} 200.0
"""

# SGLang with --enable-lora, two TP ranks reporting their own cache hit rate.
SGLANG_CACHE_METRICS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen",tp_rank="0"} 3.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="qwen",tp_rank="0"} 0.2
sglang:cache_hit_rate{model_name="qwen",tp_rank="1"} 0.4
# HELP sglang:lora_pool_slots_total Total number of LoRA adapter slots available (max_loras_per_batch).
# TYPE sglang:lora_pool_slots_total gauge
sglang:lora_pool_slots_total{model_name="qwen",tp_rank="0"} 8.0
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="qwen"} 5000.0
# HELP sglang:cached_tokens_total Number of cached prompt tokens.
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{model_name="qwen"} 1250.0
"""

# vLLM v1 with data parallel 2: `CacheConfig.metrics_info()` as labels, one sample per engine core.
VLLM_CACHE_INFO_METRICS = """\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",\
enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",is_attention_free="False",\
num_cpu_blocks="None",num_gpu_blocks="27713",num_gpu_blocks_override="None",prefix_caching_hash_algo="builtin",\
sliding_window="None",swap_space="4"} 1.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",\
enable_prefix_caching="True",engine="1",gpu_memory_utilization="0.9",is_attention_free="False",\
num_cpu_blocks="None",num_gpu_blocks="27713",num_gpu_blocks_override="None",prefix_caching_hash_algo="builtin",\
sliding_window="None",swap_space="4"} 1.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 3.0
vllm:num_requests_running{engine="1",model_name="qwen"} 2.0
"""

# SGLang with --dp-size 2 --tp-size 2: each rank reports its data-parallel group's KV pool.
SGLANG_KV_METRICS = """\
# HELP sglang:max_total_num_tokens Maximum total number of tokens in the KV cache pool.
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{dp_rank="0",engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 471258.0
sglang:max_total_num_tokens{dp_rank="0",engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="1"} 471258.0
sglang:max_total_num_tokens{dp_rank="1",engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 471258.0
sglang:max_total_num_tokens{dp_rank="1",engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="1"} 471258.0
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{dp_rank="0",engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 6.0
"""


def spec(**overrides: object) -> LaunchSpec:
    fields: dict[str, object] = {
        "served_name": "qwen",
        "source": "Qwen/Qwen2.5-7B-Instruct",
        "host": "0.0.0.0",
        "port": 8001,
    }
    return LaunchSpec(**{**fields, **overrides})  # type: ignore[arg-type]


def test_vllm_command_passes_args_as_flags() -> None:
    argv = VllmAdapter().command(spec(args={"max_num_seqs": 8, "enforce_eager": True}))
    assert argv == [
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--host", "0.0.0.0", "--port", "8001",
        "--served-model-name", "qwen", "--max-num-seqs", "8", "--enforce-eager",
    ]  # fmt: skip


@pytest.mark.parametrize("adapter", [VllmAdapter(), SglangAdapter()])
def test_hub_sources_reach_the_engine_as_bare_ids(adapter: EngineAdapter) -> None:
    argv = adapter.command(spec(source="hf://meta-llama/Llama-3.1-8B-Instruct"))
    assert "meta-llama/Llama-3.1-8B-Instruct" in argv and not any("hf://" in a for a in argv)
    assert "/models/llama" in adapter.command(spec(source="/models/llama"))


def test_vllm_command_sets_tensor_parallel_from_gpus() -> None:
    argv = VllmAdapter().command(spec(gpus=4))
    assert argv[-2:] == ["--tensor-parallel-size", "4"]
    assert "--tensor-parallel-size" not in VllmAdapter().command(spec(gpus=1))


def test_vllm_command_keeps_tensor_parallel_set_in_args() -> None:
    argv = VllmAdapter().command(spec(gpus=4, args={"tensor-parallel-size": 2}))
    assert argv.count("--tensor-parallel-size") == 1
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"


def test_sglang_command() -> None:
    argv = SglangAdapter().command(spec(gpus=2, args={"mem_fraction_static": 0.8}))
    assert argv == [
        sys.executable, "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
        "--host", "0.0.0.0", "--port", "8001", "--served-model-name", "qwen",
        "--mem-fraction-static", "0.8", "--tp-size", "2",
    ]  # fmt: skip


@pytest.mark.parametrize("key", ["tp_size", "tp-size", "tensor_parallel_size"])
def test_sglang_command_keeps_tp_set_in_args(key: str) -> None:
    argv = SglangAdapter().command(spec(gpus=8, args={key: 4}))
    flags = argv[argv.index("--served-model-name") + 2 :]
    assert flags == args_to_flags({key: 4})  # nothing appended for the 8 GPUs


def test_sim_command_uses_served_name_and_ignores_source() -> None:
    argv = SimAdapter().command(spec(gpus=2, args={"max_num_seqs": 4, "time_scale": 2.5}))
    assert argv == [
        sys.executable, "-m", "computenet.engines.sim", "--model", "qwen", "--host", "0.0.0.0",
        "--port", "8001", "--max-num-seqs", "4", "--time-scale", "2.5",
    ]  # fmt: skip


def test_vllm_metrics_sum_over_engines_and_average_kv() -> None:
    load = VllmAdapter().parse_metrics(VLLM_METRICS)
    assert load == EngineLoad(
        running=5.0,
        waiting=1.0,
        kv_cache_usage=0.375,
        prompt_tokens_total=2000.0,
        generation_tokens_total=400.0,
    )


def test_vllm_metrics_fall_back_to_old_kv_gauge() -> None:
    load = VllmAdapter().parse_metrics(VLLM_V0_METRICS)
    assert load.kv_cache_usage == 0.875
    assert load.running == 4.0
    assert load.prompt_tokens_total == 0.0  # absent series read as zero


def test_sglang_metrics() -> None:
    load = SglangAdapter().parse_metrics(SGLANG_METRICS)
    assert load == EngineLoad(
        running=6.0,
        waiting=2.0,
        kv_cache_usage=0.42,
        prompt_tokens_total=5000.0,
        generation_tokens_total=1500.0,
    )


def test_sim_reads_vllm_names() -> None:
    assert SimAdapter().parse_metrics(VLLM_METRICS) == VllmAdapter().parse_metrics(VLLM_METRICS)
    assert SimAdapter().parse_metrics(SGLANG_METRICS) == EngineLoad()


def test_sample_sums_keep_counter_total_suffix() -> None:
    sums = sample_sums(VLLM_METRICS)
    assert sums["vllm:prompt_tokens_total"] == 2000.0
    assert "vllm:prompt_tokens" not in sums
    assert sums["vllm:time_to_first_token_seconds_count"] == 7.0


def test_malformed_metrics_raise_a_parse_error() -> None:
    with pytest.raises(MetricsParseError, match="not Prometheus text"):
        VllmAdapter().parse_metrics("vllm:num_requests_running{model_name=qwen 3\n")


def test_empty_metrics_read_as_idle() -> None:
    assert VllmAdapter().parse_metrics("") == EngineLoad()


def test_vllm_lora_adapters_come_from_the_newest_info_sample() -> None:
    load = VllmAdapter().parse_metrics(VLLM_LORA_METRICS)
    assert load.lora_adapters == {"sql-lora", "chat-lora", "tool-lora"}  # running and waiting
    assert load.max_lora == 4
    assert load.running == 2.0


def test_vllm_without_lora_reports_none() -> None:
    load = VllmAdapter().parse_metrics(VLLM_METRICS)
    assert (load.lora_adapters, load.max_lora) == (frozenset(), 0)


def test_vllm_prefix_cache_counters_and_hit_rate() -> None:
    load = VllmAdapter().parse_metrics(VLLM_LORA_METRICS)
    # Both spellings are exported side by side during the deprecation: counted once, not twice.
    assert (load.prefix_cache_queries_total, load.prefix_cache_hits_total) == (4096.0, 1024.0)
    assert load.prefix_cache_hit_rate == 0.25


def test_vllm_prefix_cache_falls_back_to_gpu_names() -> None:
    load = VllmAdapter().parse_metrics(VLLM_OLD_PREFIX_METRICS)
    assert (load.prefix_cache_queries_total, load.prefix_cache_hits_total) == (800.0, 200.0)
    assert load.prefix_cache_hit_rate == 0.25


def test_hit_rate_is_unknown_before_any_query() -> None:
    assert VllmAdapter().parse_metrics(VLLM_METRICS).prefix_cache_hit_rate is None
    assert SglangAdapter().parse_metrics(SGLANG_METRICS).prefix_cache_hit_rate is None


def test_sglang_cache_hit_rate_and_lora_slots() -> None:
    load = SglangAdapter().parse_metrics(SGLANG_CACHE_METRICS)
    assert load.prefix_cache_hit_rate == pytest.approx(0.3)  # its own recent gauge, averaged over ranks
    assert (load.prefix_cache_queries_total, load.prefix_cache_hits_total) == (5000.0, 1250.0)
    assert load.max_lora == 8
    assert load.lora_adapters == frozenset()  # SGLang does not name them


def test_sglang_hit_rate_from_cached_tokens_without_the_gauge() -> None:
    text = "\n".join(line for line in SGLANG_CACHE_METRICS.splitlines() if "cache_hit_rate" not in line)
    assert SglangAdapter().parse_metrics(text).prefix_cache_hit_rate == 0.25


def test_the_sim_reports_prefix_cache_counters_under_vllm_names() -> None:
    text = VLLM_LORA_METRICS.replace('engine="0",', "")
    assert SimAdapter().parse_metrics(text).prefix_cache_hit_rate == 0.25


def test_vllm_kv_capacity_is_blocks_times_block_size_over_engine_cores() -> None:
    load = VllmAdapter().parse_metrics(VLLM_CACHE_INFO_METRICS)
    assert load.kv_capacity_tokens == 2 * 27713 * 16
    assert load.running == 5.0
    one_core = "\n".join(line for line in VLLM_CACHE_INFO_METRICS.splitlines() if 'engine="1"' not in line)
    assert VllmAdapter().parse_metrics(one_core).kv_capacity_tokens == 27713 * 16


def test_vllm_kv_capacity_is_unknown_until_the_cache_is_allocated() -> None:
    text = VLLM_CACHE_INFO_METRICS.replace('num_gpu_blocks="27713"', 'num_gpu_blocks="None"', 1)
    assert VllmAdapter().parse_metrics(text).kv_capacity_tokens == 0.0  # not half of it
    assert VllmAdapter().parse_metrics(VLLM_METRICS).kv_capacity_tokens == 0.0  # not exported at all


def test_sglang_kv_capacity_counts_each_data_parallel_pool_once() -> None:
    load = SglangAdapter().parse_metrics(SGLANG_KV_METRICS)
    assert load.kv_capacity_tokens == 2 * 471258
    assert load.running == 6.0
    assert SglangAdapter().parse_metrics(SGLANG_METRICS).kv_capacity_tokens == 0.0


def test_the_sims_own_metrics_report_its_kv_size() -> None:
    catalog = load_catalog()
    config = CoreConfig(num_gpu_blocks_override=300)
    core = EngineCore(catalog.model("llama-3.1-8b"), catalog.gpu("H100"), config)
    text = generate_latest(SimMetrics("m", core, cache_config_info(core)).registry).decode()
    assert SimAdapter().parse_metrics(text).kv_capacity_tokens == 300 * 16 == core.kv_capacity_tokens


@pytest.mark.parametrize(
    "text",
    [
        VLLM_METRICS,
        VLLM_LORA_METRICS,
        VLLM_CACHE_INFO_METRICS,
        SGLANG_METRICS,
        SGLANG_CACHE_METRICS,
        SGLANG_KV_METRICS,
    ],
)
def test_values_match_prometheus_clients_own_parser(text: str) -> None:
    expected: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            expected.setdefault(sample.name, []).append(sample.value)
    assert sample_values(text) == expected


def test_labels_are_unescaped() -> None:
    text = 'x:info{path="C:\\\\models",quote="say \\"hi\\"",lines="a\\nb"} 1.0\n'
    [sample] = SeriesReader("x:info").read(text)["x:info"]
    assert sample.labels == {"path": "C:\\models", "quote": 'say "hi"', "lines": "a\nb"}


@pytest.mark.parametrize(
    "text",
    [
        "<!DOCTYPE html>\n<html><body>Bad Gateway</body></html>\n",
        '{"error": "not found"}',
        'vllm:num_requests_running{model_name="m"} 3.0\nvllm:num_requests_waiting{model_name="m',
        "vllm:num_requests_running{} abc\n",
    ],
)
def test_text_that_is_not_an_exposition_is_an_error_not_an_idle_engine(text: str) -> None:
    with pytest.raises(MetricsParseError, match="line"):
        VllmAdapter().parse_metrics(text)
