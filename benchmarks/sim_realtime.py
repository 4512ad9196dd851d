"""Does the real-time sim keep the simulated GPU's pace under load, on one CPU core?

    .venv/bin/python benchmarks/sim_realtime.py [--streams 64] [--prompt-tokens 256] [--output-tokens 256]

Starts one `python -m computenet.engines.sim` process (pinned to CPU 0 with
`taskset` when there is one), then from this process (pinned to the other CPUs)
opens N concurrent streaming completions with distinct prompts, fixed output
length and `ignore_eos`. Two questions:

* drift: inside the server, the summed planned step durations against the wall
  time that actually passed between token deliveries (`/sim/stats`, diffed
  around the run): (actual - planned) / planned. Absolute step targets make this
  ~0 while the server keeps up; it grows when the CPU cannot serve the streams.
* what a client sees: its time per output token (TPOT) and time to first token
  against the model's: the same prompts run through the engine core on a virtual
  clock (so mixed prefill/decode steps count as they should), and the mean pure
  decode step for that batch and context.

Prints a markdown row and the JSON behind it. Loopback only; the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from typing import Any

import aiohttp

from computenet.engines.sim.catalog import load_catalog
from computenet.engines.sim.core import CoreConfig, EngineCore
from computenet.engines.sim.kvcache import chain_hashes
from computenet.engines.sim.perf import PerfModel
from computenet.engines.sim.scheduler import SimRequest
from computenet.engines.sim.tokens import HASHED_BASE, VOCAB_SIZE
from computenet.pools.processes import free_port

MODEL = "bench-sim"
GPU, ARCH = "H100", "llama-3.1-8b"
HEALTH_TIMEOUT_S = 30.0


def start_sim(port: int, time_scale: float) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "computenet.engines.sim", "--model", MODEL, "--port", str(port)]
    argv += ["--gpu", GPU, "--arch", ARCH, "--time-scale", str(time_scale)]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def pin_client_off_cpu0() -> None:
    cpus = os.sched_getaffinity(0) - {0} if hasattr(os, "sched_getaffinity") else set()
    if cpus:
        os.sched_setaffinity(0, cpus)


async def wait_healthy(session: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"sim exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            async with session.get(f"{base}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("sim not healthy in time")


async def stream_one(
    session: aiohttp.ClientSession, base: str, prompt: list[int], output: int
) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": output, "ignore_eos": True, "stream": True}
    sent = time.perf_counter()
    stamps: list[float] = []
    async with session.post(f"{base}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    ttft = stamps[0] - sent
    tpot = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return {"tokens": len(stamps), "ttft_s": ttft, "tpot_s": tpot}


def predicted_decode_step_s(streams: int, prompt_tokens: int, output_tokens: int, time_scale: float) -> float:
    """Mean model decode step for `streams` sequences over the run's growing context."""
    catalog = load_catalog()
    perf = PerfModel(catalog.model(ARCH), catalog.gpu(GPU))
    steps = [
        perf.decode_step_time(streams, streams * (prompt_tokens + k)) for k in range(1, output_tokens)
    ]  # the first token comes from prefill; every later one from a decode step
    return statistics.fmean(steps) / time_scale


def model_latencies_s(prompts: list[list[int]], output_tokens: int, time_scale: float) -> tuple[float, float]:
    """(mean TPOT, median TTFT) of the same requests, all arriving at once, on the core's virtual clock."""
    catalog = load_catalog()
    core = EngineCore(catalog.model(ARCH), catalog.gpu(GPU), CoreConfig())
    requests = [
        SimRequest(str(i), len(p), output_tokens, chain_hashes(p, core.kv.block_size), prompt_token_ids=p)
        for i, p in enumerate(prompts)
    ]
    for request in requests:
        core.add(request)
    core.run_until_idle(coalesce=False)
    tpots = [(r.finish_s or 0.0) - (r.first_token_s or 0.0) for r in requests]
    ttfts = [r.first_token_s or 0.0 for r in requests]
    return statistics.fmean(tpots) / (output_tokens - 1) / time_scale, statistics.median(ttfts) / time_scale


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_sim(port, args.time_scale)
    rng = random.Random(7)
    prompts = [
        [rng.randrange(HASHED_BASE, VOCAB_SIZE) for _ in range(args.prompt_tokens)]
        for _ in range(args.streams)
    ]
    connector = aiohttp.TCPConnector(limit=args.streams + 4)
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=600)
        ) as session:
            await wait_healthy(session, base, process)
            await stream_one(session, base, [1, 2, 3], 8)  # warm-up: imports, first-call paths
            async with session.get(f"{base}/sim/stats") as response:
                before = await response.json()
            started = time.perf_counter()
            results = await asyncio.gather(
                *(stream_one(session, base, prompt, args.output_tokens) for prompt in prompts)
            )
            wall = time.perf_counter() - started
            async with session.get(f"{base}/sim/stats") as response:
                after = await response.json()
    finally:
        process.terminate()
        process.wait(timeout=10)
    return summarise(args, prompts, results, before, after, wall)


def summarise(
    args: argparse.Namespace,
    prompts: list[list[int]],
    results: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    planned = after["planned_s"] - before["planned_s"]
    actual = after["actual_s"] - before["actual_s"]
    steps = after["steps"] - before["steps"]
    tpots = [r["tpot_s"] for r in results]
    model_step = predicted_decode_step_s(
        args.streams, args.prompt_tokens, args.output_tokens, args.time_scale
    )
    model_tpot, model_ttft = model_latencies_s(prompts, args.output_tokens, args.time_scale)
    client_tpot = statistics.fmean(tpots)
    return {
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core {platform.machine()}, CPython {platform.python_version()}",
        "sim_pinned_to_cpu0": shutil.which("taskset") is not None,
        "streams": args.streams,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "time_scale": args.time_scale,
        "tokens_received": sum(r["tokens"] for r in results),
        "wall_s": wall,
        "server_steps": steps,
        "server_planned_s": planned,
        "server_actual_s": actual,
        "drift_pct": 100 * (actual - planned) / planned,
        "server_mean_lag_ms": 1000 * (after["lag_sum_s"] - before["lag_sum_s"]) / steps,
        "server_max_lag_ms": 1000 * after["max_lag_s"],
        "client_tpot_ms_p50": 1000 * statistics.median(tpots),
        "client_tpot_ms_mean": 1000 * client_tpot,
        "model_tpot_ms_mean": 1000 * model_tpot,
        "tpot_vs_model_pct": 100 * (client_tpot - model_tpot) / model_tpot,
        "model_decode_step_ms": 1000 * model_step,
        "tpot_vs_decode_step_pct": 100 * (client_tpot - model_step) / model_step,
        "client_ttft_ms_p50": 1000 * statistics.median(r["ttft_s"] for r in results),
        "model_ttft_ms_p50": 1000 * model_ttft,
    }


def markdown_row(s: dict[str, Any]) -> str:
    return (
        f"| {s['date']} | {s['machine']} | {s['streams']} x {s['prompt_tokens']}+{s['output_tokens']} | "
        f"{s['server_steps']} | {s['server_planned_s']:.3f} / {s['server_actual_s']:.3f} s | "
        f"{s['drift_pct']:+.2f}% | {s['server_mean_lag_ms']:.2f} / {s['server_max_lag_ms']:.1f} ms | "
        f"{s['client_tpot_ms_mean']:.2f} / {s['model_tpot_ms_mean']:.2f} ms "
        f"({s['tpot_vs_model_pct']:+.1f}%) | "
        f"{s['model_decode_step_ms']:.2f} ms | "
        f"{s['client_ttft_ms_p50']:.0f} / {s['model_ttft_ms_p50']:.0f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    pin_client_off_cpu0()
    summary = asyncio.run(run(args))
    print(
        "| date | machine | streams x (prompt+output) | steps | planned / actual | drift | lag mean / max "
        "| TPOT client / model | model decode step | TTFT p50 client / model |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(markdown_row(summary))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
