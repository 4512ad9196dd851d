"""`computenet bench synth` and `bench replay` end to end, through `main` as a user runs them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from computenet.cli.main import main
from computenet.engines.sim.config import SimConfig
from computenet.engines.sim.server import create_app
from computenet.pools.processes import free_port
from computenet.workloads import read_trace

from ..servers import serve

AZURE = Path(__file__).resolve().parents[3] / "data" / "traces" / "azure_code_2023.csv"
SUMMARY_KEYS = {
    "requests", "completed", "failed", "ttft_s", "tpot_s", "itl_s", "e2e_s", "throughput_rps",
    "output_tokens_per_s", "prefix_hit_rate", "wall_s", "errors", "max_send_lag_s",
}  # fmt: skip


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    return int(caught.value.code or 0)


async def _exit_code_in_thread(argv: list[str]) -> int:
    """The CLI runs its own event loop, so it runs beside the test's loop that serves the sim."""
    return await asyncio.to_thread(_exit_code, argv)


def test_synth_writes_a_mooncake_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth.jsonl"
    argv = ["bench", "synth", "--arrival", "gamma", "--rate", "50", "--cv", "2", "--count", "30"]
    argv += [
        "--input-tokens",
        "40",
        "--output-tokens",
        "3",
        "--prefix-groups",
        "2",
        "--shared-prefix-tokens",
        "512",
    ]
    assert _exit_code([*argv, "-o", str(out)]) == 0
    requests = read_trace(out)
    assert len(requests) == 30 and {r.input_tokens for r in requests} == {552}
    assert {r.hash_ids[0] for r in requests} <= {0, 1}
    assert "wrote 30 requests" in capsys.readouterr().out


def test_synth_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "bench",
        "synth",
        "--count",
        "3",
        "--input-tokens",
        "4",
        "--output-tokens",
        "2",
        "-o",
        str(tmp_path / "x"),
    ]
    assert _exit_code([*base, "--rate", "0"]) == 2
    assert capsys.readouterr().err == "error: --rate must be a positive number, got '0'\n"
    assert _exit_code([*base, "--rate", "1", "--prefix-groups", "2", "--shared-prefix-tokens", "100"]) == 2
    assert "multiple of 512" in capsys.readouterr().err


async def test_replay_synthetic_trace_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    synth = [
        "bench",
        "synth",
        "--rate",
        "200",
        "--count",
        "12",
        "--input-tokens",
        "20",
        "--output-tokens",
        "3",
    ]
    assert _exit_code([*synth, "-o", str(trace)]) == 0
    capsys.readouterr()
    async with serve(create_app(SimConfig(model="m", max_model_len=4096))) as url:
        code = await _exit_code_in_thread(
            ["bench", "replay", "--trace", str(trace), "--target", url, "--json"]
        )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= SUMMARY_KEYS and summary["model"] == "m"
    assert (summary["requests"], summary["completed"], summary["failed"]) == (12, 12, 0)
    assert summary["ttft_s"]["p50"] <= summary["e2e_s"]["p50"]


async def test_replay_azure_slice_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "replay", "--trace", str(AZURE), "--limit", "8", "--speedup", "50", "--api", "chat"]
    async with serve(create_app(SimConfig(model="m", max_model_len=131072))) as url:
        assert await _exit_code_in_thread([*argv, "--target", url]) == 0
    out = capsys.readouterr().out
    assert "TTFT (ms)" in out and "E2E (ms)" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith(("requests", "completed"))] == [
        "8",
        "8",
    ]


async def test_failed_requests_are_counted_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "replay",
        "--trace",
        str(AZURE),
        "--limit",
        "3",
        "--speedup",
        "100",
        "--model",
        "nope",
        "--json",
    ]
    async with serve(create_app(SimConfig(model="m", max_model_len=131072))) as url:
        assert await _exit_code_in_thread([*argv, "--target", url]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["completed"], summary["failed"]) == (0, 3)
    assert summary["errors"] == {"HTTP 404: The model `nope` does not exist.": 3}
    assert summary["ttft_s"]["mean"] is None and summary["throughput_rps"] is None


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1}\n')
    target = ["--target", "http://127.0.0.1:9"]
    assert _exit_code(["bench", "replay", "--trace", str(trace), *target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{trace} line 2" in err and '"input_length"' in err
    assert err.count("\n") == 1
    assert _exit_code(["bench", "replay", "--trace", str(AZURE), "--speedup", "0", *target]) == 2
    assert capsys.readouterr().err == "error: --speedup must be a positive number, got '0'\n"
    assert _exit_code(["bench", "replay", "--trace", str(tmp_path / "missing.csv"), *target]) == 2
    assert "no such file" in capsys.readouterr().err


def test_unreachable_target_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"http://127.0.0.1:{free_port()}"
    assert _exit_code(["bench", "replay", "--trace", str(AZURE), "--limit", "2", "--target", target]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach {target}") and err.count("\n") == 1
