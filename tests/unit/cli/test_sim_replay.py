"""`computenet sim replay` end to end through `main`, and gateway policies in the simulated fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from computenet.api import DEFAULT_PRESET
from computenet.cli.main import main
from computenet.cli.sim_routing import GatewayReplicas, GatewayRouter, make_router, router_factories
from computenet.cli.simulate import DEFAULT_ROUTER
from computenet.engines.sim.catalog import load_catalog
from computenet.engines.sim.fleet import Arrival, Fleet, FleetConfig
from computenet.engines.sim.scheduler import SimRequest
from computenet.gateway.routing.presets import PRESETS, build_pipeline

TRACES = Path(__file__).resolve().parents[3] / "data" / "traces"
MOONCAKE, AZURE = TRACES / "mooncake_conversation.jsonl", TRACES / "azure_code_2023.csv"
KEYS = {
    "requests", "completed", "failed", "ttft_s", "tpot_s", "itl_s", "e2e_s", "throughput_rps",
    "output_tokens_per_s", "prefix_hit_rate", "wall_s", "errors", "gpu_busy", "virtual_s", "sim_speedup",
    "preemptions", "steps", "router", "replicas", "gpu", "model", "tp", "gateways", "max_in_flight",
}  # fmt: skip


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    return int(caught.value.code or 0)


def _replay_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert _exit_code(["sim", "replay", *argv, "--json"]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


@pytest.mark.parametrize(
    ("trace", "router"), [(MOONCAKE, "prefix_load"), (MOONCAKE, "least_outstanding"), (AZURE, "round_robin")]
)
def test_replay_summarises_a_trace_slice(
    capsys: pytest.CaptureFixture[str], trace: Path, router: str
) -> None:
    summary = _replay_json(
        capsys, "--trace", str(trace), "--limit", "200", "--replicas", "4", "--router", router
    )
    assert set(summary) == KEYS
    assert summary["requests"] == 200 and summary["completed"] + summary["failed"] == 200
    assert summary["completed"] > 0 and summary["router"] == router and summary["replicas"] == 4
    assert 0 <= summary["prefix_hit_rate"] <= 1 and 0 < summary["gpu_busy"] <= 1
    assert summary["virtual_s"] > 0 and summary["wall_s"] > 0
    ttft, e2e = summary["ttft_s"], summary["e2e_s"]
    assert 0 < ttft["p50"] <= ttft["p99"] and ttft["p50"] <= e2e["p50"]
    assert summary["itl_s"]["mean"] is None  # per-token gaps are not tracked in virtual time
    if trace == MOONCAKE:
        assert summary["prefix_hit_rate"] > 0


def test_replay_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "replay", "--trace", str(AZURE), "--duration", "30", "--speedup", "2"]
    argv += ["--gpu", "H200", "--no-prefix-caching", "--max-num-seqs", "64"]
    assert _exit_code(argv) == 0
    out = capsys.readouterr()
    assert "TTFT (ms)" in out.out and "gpu_busy" in out.out and "simulating" in out.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--router", "fastest"], "--router: unknown router 'fastest'; known: least-request, least_kv"),
        (["--gpu", "B300"], "--gpu: unknown GPU 'B300'"),
        (["--model", "gpt-5"], "--model: unknown model architecture 'gpt-5'"),
        (["--replicas", "zero"], "--replicas must be a positive integer"),
        (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization must be in (0, 1]"),
        (["--model", "llama-3.1-70b", "--gpu", "L4"], "--gpu L4: llama-3.1-70b needs"),
        (["--catalog", "/no/such/catalog.yaml"], "--catalog: /no/such/catalog.yaml"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert _exit_code(["sim", "replay", "--trace", str(AZURE), "--limit", "5", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_missing_trace_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _exit_code(["sim", "replay", "--trace", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err


def test_gateway_policies_keep_their_names_and_the_sims_stay_reachable() -> None:
    names = set(router_factories("m"))
    assert set(PRESETS) <= names and {"sim_round_robin", "sim_random", "sim_prefix", "prefix_load"} <= names
    assert isinstance(make_router("least_outstanding", model="m"), GatewayRouter)  # an old name
    assert isinstance(make_router("precise-prefix", model="m"), GatewayRouter)
    assert DEFAULT_ROUTER == DEFAULT_PRESET
    assert not isinstance(make_router("sim_least_outstanding", model="m"), GatewayRouter)


def test_a_gateway_policy_routes_the_fleet_through_the_adapter() -> None:
    catalog = load_catalog()
    router = GatewayRouter(build_pipeline("least-request"), "llama")
    fleet = Fleet(catalog.model("llama-3.1-8b"), catalog.gpu("H100"), FleetConfig(replicas=3), router)
    burst = [Arrival(0.0, 300, 200, (i,)) for i in range(9)]
    result = fleet.run([*burst, Arrival(30.0, 300, 2, (99,))])
    assert [r.replica for r in result.records[:9]].count(0) == 3  # balanced while all were in flight
    assert result.totals.completed == 10
    # everything finished: the gateway's view is refreshed from the fleet at the next choice
    router.choose(SimRequest("probe", 10, 1), fleet.replicas)
    assert [router.state.board.outstanding(f"replica-{i}") for i in range(3)] == [0, 0, 0]


def test_overload_behind_the_gate_shows_as_429_and_503_not_lost_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--trace", str(MOONCAKE), "--limit", "300", "--speedup", "50", "--router", "least-request"]
    gated = _replay_json(capsys, *argv, "--max-in-flight", "4", "--max-queue", "20", "--max-wait", "5")
    assert gated["max_in_flight"] == 4 and gated["failed"] > 0
    assert gated["completed"] + gated["failed"] == 300
    assert {reason.split(":")[0] for reason in gated["errors"]} <= {"HTTP 429", "HTTP 503"}
    assert gated["e2e_s"]["p99"] < 60  # what was admitted finished; nothing queued without end
    ungated = _replay_json(capsys, *argv)
    assert ungated["failed"] == 0 and ungated["e2e_s"]["p99"] > gated["e2e_s"]["p99"]


def test_an_auto_gate_sizes_itself_from_the_replicas_kv_caches(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--trace", str(MOONCAKE), "--limit", "300", "--speedup", "50", "--router", "least-request"]
    auto = _replay_json(capsys, *argv, "--max-in-flight", "auto", "--max-queue", "20", "--max-wait", "5")
    assert auto["max_in_flight"] == "auto" and auto["completed"] + auto["failed"] == 300
    assert {reason.split(":")[0] for reason in auto["errors"]} <= {"HTTP 429", "HTTP 503"}


def test_bad_gate_flags_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "replay", "--trace", str(MOONCAKE), "--limit", "5"]
    assert _exit_code([*argv, "--max-in-flight", "0"]) == 2
    assert "--max-in-flight must be a positive integer or auto, got '0'" in capsys.readouterr().err
    assert _exit_code([*argv, "--max-in-flight", "automatic"]) == 2
    assert "--max-in-flight must be a positive integer or auto" in capsys.readouterr().err
    assert _exit_code([*argv, "--gateways", "-1"]) == 2
    assert "--gateways must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize(("router", "gateways", "same"), [
    ("prefix", 1, True), ("prefix", 2, False), ("precise-prefix", 1, True), ("precise-prefix", 2, True),
])  # fmt: skip
def test_gateway_replicas_share_the_precise_index_but_not_the_approximate_one(
    router: str, gateways: int, same: bool
) -> None:
    """A prompt's second request follows its first only where the gateway replica that takes it knows
    where the first went: always with the engines' KV events, never with another replica's memory."""
    catalog = load_catalog()
    chosen = make_router(router, model="llama", gateways=gateways)
    assert isinstance(chosen, GatewayReplicas if gateways > 1 else GatewayRouter)
    fleet = Fleet(catalog.model("llama-3.1-8b"), catalog.gpu("H100"), FleetConfig(replicas=4), chosen)
    result = fleet.run([Arrival(0.0, 2048, 300, (1, 2, 3, 4)), Arrival(1.0, 2048, 300, (1, 2, 3, 4))])
    first, second = (r.replica for r in result.records)
    assert (first == second) is same
    assert result.records[1].cached_tokens > 0 if same else result.records[1].cached_tokens == 0


def test_the_approximate_index_is_sized_to_the_replica_cache() -> None:
    catalog = load_catalog()
    router = GatewayRouter(build_pipeline("prefix"), "llama")
    fleet = Fleet(catalog.model("llama-3.1-8b"), catalog.gpu("H100"), FleetConfig(replicas=2), router)
    fleet.run([Arrival(0.0, 100, 2, (1,))])
    assert router.state.approx.capacity_blocks == fleet.replicas[0].kv_blocks > 10_000
