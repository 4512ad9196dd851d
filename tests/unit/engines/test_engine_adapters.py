"""Adapters build the right command lines and read the right metric names."""

from __future__ import annotations

import sys

import pytest

from computenet.engines import EngineLoad, LaunchSpec, args_to_flags
from computenet.engines.metrics import MetricsParseError, sample_sums
from computenet.engines.sglang import SglangAdapter
from computenet.engines.sim import SimAdapter
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
