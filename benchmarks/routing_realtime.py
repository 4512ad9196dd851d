"""Routing in real time: ComputeNet's policies against sglang-router and vllm-router on the same sim replicas.

    .venv/bin/python benchmarks/routing_realtime.py
        [--routers computenet/precise-prefix,computenet/prefix,sglang-router/cache_aware,
                   vllm-router/cache_aware,vllm-router/round_robin]
        [--replicas 4] [--time-scale 6] [--speedup 2] [--trace-window-s 900] [--conversations F]
        [--rounds 1] [--probes 9] [--out results.json] [--write-trace FILE] [--keep-alive]

For each router in turn: N fresh `python -m computenet.engines.sim` replicas (H100,
Llama-3.1-8B by default; empty caches every time, KV events on ZMQ), the router in front
of them with its policy, and the same slice of the Mooncake conversation trace replayed
through it open-loop, streamed, one connection per request (`gateway/trace_client.py`
says why). Then everything is stopped, even on error. Routers (`gateway/peers.py`
`ROUTERS`):

* `computenet/precise-prefix`, `computenet/prefix` (also `computenet/round-robin`):
  `computenet gateway --upstream ... --engine sim --kv-events ... --kv-events-replay ...`,
  so precise-prefix follows the sims' real KV events and every policy reads their
  /metrics; its KV-event counters are read from its /metrics before it stops;
* `sglang-router/cache_aware` (0.3.2): its approximate radix tree over prompt text;
* `vllm-router/cache_aware` (0.1.17), its prefix-aware policy (a tree over token ids it
  gets from each worker's /tokenize), and `vllm-router/round_robin`. Its precise
  `vllm-router/kv_aware` can be asked for, but cannot read the sim's events (see
  docs/benchmarks.md), so it routes on load alone.

The slice. Replaying the whole hour on 4 replicas instead of the 16 it was served by
would either overload them 4x or, slowed 4x, stretch every gap between a conversation's
turns 4x, so the caches would have forgotten each turn before the next. Instead a share
of the conversations is kept (`--conversations`, default replicas / 16: a request's
conversation is its second Mooncake hash id; the first is a system prompt all share),
the first `--trace-window-s` seconds of them, at `--speedup` times the recorded rate.
That keeps the recorded reuse gaps (divided by the speed-up) and the per-replica load.

Time. Each sim runs `--time-scale` times faster than the GPU it models, and the arrivals
are compressed as much, so the simulated traffic is unchanged while the run is shorter.
Every latency and rate in the table is in simulated time: measured wall time x
time-scale (rates ÷ it). That multiplies whatever the CPU adds as well — the router's own
work per request, the client's and the scheduler's delays on a shared 2-core machine —
so three columns say how much of a figure is not routing:

* engine TTFT mean: the sims' own TTFT (`vllm:time_to_first_token_seconds`, from the
  request reaching a sim), x time-scale: routing quality without the router's overhead;
* added TTFT idle (real ms): before the replay, `--probes` requests of `--probe-tokens`
  distinct words, one at a time, through the router and straight to a sim: the median
  difference. The sims then forget those prompts (`/reset_prefix_cache`);
* router CPU per request (real ms), the sims' pacing (the wall time their steps took
  against the time they should have: 0 % means they kept up) and the machine's other
  load (busy CPU none of ours explains, in % of one core).

Also per router: requests, failures, TTFT mean/p50/p90/p99, TPOT p50/p90, throughput, the
prefix-cache hit rate from the sims' counters (`vllm:prefix_cache_hits_total` /
`queries_total`), the load spread (the busiest replica's prompt tokens over the mean), and
per round the ratio of the best peer's p90 TTFT to precise-prefix's (target: 1.2). CPUs:
the router alone on `--router-cpus` (default: the last CPU), the sims and this client on
`--sim-cpus` / `--client-cpus` (default: the others). Everything binds 127.0.0.1.
`--rounds N` runs the list N times in turn. Prints a markdown table and the JSON (`--out`
writes it too); `--write-trace` saves the slice with simulated-time arrivals for
`computenet sim replay`, which the run uses afterwards for a virtual-time reference of
ComputeNet's presets (`--no-virtual` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import peers, proctree, trace_client
from gateway import routing_report as report
from gateway.flags import at_least, cpu_list, cpu_set, fraction, positive
from gateway.simfleet import SimFleet, SimSpec
from prometheus_client.parser import text_string_to_metric_families

from computenet.workloads import (
    TraceRequest,
    prompt_text,
    read_trace,
    write_mooncake,
)

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "data" / "traces" / "mooncake_conversation.jsonl"
MODEL = "bench-sim"
DEFAULT_ROUTERS = (
    "computenet/precise-prefix",
    "computenet/prefix",
    "sglang-router/cache_aware",
    "vllm-router/cache_aware",
    "vllm-router/round_robin",
)
FLEET_OF_RECORD = 16  # replicas the whole trace is sized for (docs/benchmarks.md, sim virtual-time speed)
READY_TIMEOUT_S = 60.0


def conversation(request: TraceRequest, index: int) -> str:
    """Mooncake's first hash id is a system prompt every request shares; the second names the conversation."""
    return str(request.hash_ids[1]) if len(request.hash_ids) > 1 else f"single-{index}"


def select_slice(args: argparse.Namespace) -> list[TraceRequest]:
    """The kept conversations' requests of the window, arrivals in simulated seconds (÷ speed-up)."""
    chosen = []
    for index, request in enumerate(read_trace(args.trace)):
        if request.arrival_s >= args.trace_start_s + args.trace_window_s:
            break
        if request.arrival_s < args.trace_start_s:
            continue
        if zlib.crc32(conversation(request, index).encode()) % 10_000 >= args.conversations * 10_000:
            continue
        at_s = (request.arrival_s - args.trace_start_s) / args.speedup
        chosen.append(replace(request, arrival_s=at_s))
    if args.limit:
        chosen = chosen[: args.limit]
    return chosen


def prepare(requests: Sequence[TraceRequest], time_scale: float) -> list[trace_client.Prepared]:
    """Bodies built once for every router: the same prompt text (shared prefixes shared) and lengths."""
    out = []
    for index, request in enumerate(requests):
        body = {
            "model": MODEL,
            "prompt": prompt_text(request, index),
            "max_tokens": request.output_tokens,
            "min_tokens": request.output_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        out.append(trace_client.Prepared(request.arrival_s / time_scale, json.dumps(body).encode()))
    return out


class RouterProcess:
    """A started router: its process group is ours to stop."""

    def __init__(self, router: peers.FleetRouter, args: argparse.Namespace, fleet: SimFleet, workdir: Path):
        self.peer = peers.PEERS[router.peer]
        self.venv = peers.ensure_installed(self.peer, args.cache_dir)
        self.port = peers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.launch = router.launch(self.venv, self.port, MODEL, fleet.workers, workdir)
        self.log = workdir / "router.log"
        self.cpus: str | None = args.router_cpus
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = proctree.pinned(self.cpus, self.launch.argv)
        self.proc = proctree.spawn(argv, self.log, env=self.launch.env, cwd=self.log.parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not completes(self.url, "warm-up 0"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"router not ready (exit code {self.proc.poll()}):\n{tail}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None:
            proctree.stop_group(self.proc, 10)


def completes(url: str, prompt: str) -> bool:
    """One small non-streamed completion through `url` answers 200."""
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2}).encode()
    request = urllib.request.Request(
        url + "/v1/completions", data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def snapshot(router_pid: int, fleet: SimFleet) -> report.Snapshot:
    cpu = {
        "system": proctree.system_busy_s(),
        "router": proctree.tree_cpu_s(router_pid),
        "sims": sum(proctree.tree_cpu_s(pid) for pid in fleet.pids()),
        "client": proctree.cpu_ns(os.getpid()) / 1e9,  # this process alone, not its children
    }
    return report.Snapshot(fleet.counters(), fleet.pacing(), cpu)


def added_ttft_ms(router_url: str, fleet: SimFleet, args: argparse.Namespace) -> float | None:
    """Median TTFT through the router minus straight to a sim, idle, one request at a time (real ms).

    Distinct prompts of `--probe-tokens` words, so nothing is cached; afterwards the sims forget
    them, so the replay starts on empty caches.
    """
    if args.probes <= 0:
        return None
    urls = [fleet.workers[0].url + "/v1/completions", router_url + "/v1/completions"]
    bodies = [
        [probe_body(args.probe_tokens, 1_000_000 + 2 * i + j) for j in range(len(urls))]
        for i in range(args.probes)
    ]
    direct, routed = asyncio.run(trace_client.probe(urls, bodies))
    fleet.reset_caches()
    if not direct or not routed:
        return None
    return 1000 * (statistics.median(routed) - statistics.median(direct))


def kv_event_stats(url: str) -> dict[str, int] | None:
    """ComputeNet's KV-event counters (`computenet_gateway_kv_event*_total`), summed over replicas,
    from the gateway's /metrics; None when it has none (it followed no KV events)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    stats: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix("computenet_gateway_")
        if family.type == "counter" and name.startswith("kv_event"):
            key = "events" if name == "kv_events" else name.removeprefix("kv_event_")
            stats[key] = int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    return stats if stats.get("batches") else None


def probe_body(tokens: int, index: int) -> bytes:
    text = prompt_text(TraceRequest(0.0, tokens, 2), index)
    return json.dumps({"model": MODEL, "prompt": text, "max_tokens": 2, "stream": True}).encode()


def measure(
    name: str, args: argparse.Namespace, prepared: Sequence[trace_client.Prepared], workdir: Path
) -> dict[str, Any]:
    """Fresh sims, the router, the probe, the replay; every process stopped before returning."""
    router = peers.ROUTERS[name]
    spec = SimSpec(MODEL, args.gpu, args.arch, args.time_scale, args.sim_cpus)
    fleet = SimFleet(spec, args.replicas, workdir)
    proc: RouterProcess | None = None
    out: dict[str, Any] = {"router": name, "policy": router.policy}
    try:
        fleet.start()
        proc = RouterProcess(router, args, fleet, workdir)
        out["version"] = peers.version(proc.peer, proc.venv)
        out["command"] = " ".join(proc.launch.argv)
        proc.start()
        assert proc.proc is not None
        for i in range(1, 2 * args.replicas):  # first-call paths of the router and every sim
            completes(proc.url, f"warm-up {i}")
        added = added_ttft_ms(proc.url, fleet, args)
        before, t0 = snapshot(proc.proc.pid, fleet), time.perf_counter()
        url = proc.url + "/v1/completions"
        stop_s = prepared[-1].at_s + 1e-6
        results = asyncio.run(
            trace_client.replay(
                url, prepared, timeout_s=args.request_timeout_s, stop_s=stop_s, keep_alive=args.keep_alive
            )
        )
        wall_s = time.perf_counter() - t0
        out |= report.row(results, wall_s, before, snapshot(proc.proc.pid, fleet), args.time_scale)
        out["added_ttft_idle_ms"] = None if added is None else round(added, 2)
        if router.peer == "computenet":
            out["kv_event_stats"] = kv_event_stats(proc.url)
    except Exception as exc:  # one router that cannot run must not lose the others' figures
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"{name}: failed: {out['error']}", file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.stop()
        fleet.stop()
    return out


def virtual_reference(trace_file: Path, args: argparse.Namespace, presets: Sequence[str]) -> dict[str, Any]:
    """`computenet sim replay` of the same slice (simulated-time arrivals) for ComputeNet's presets."""
    out: dict[str, Any] = {}
    for preset in presets:
        argv = [str(ROOT / ".venv" / "bin" / "computenet"), "sim", "replay", "--trace", str(trace_file)]
        argv += ["--replicas", str(args.replicas), "--gpu", args.gpu, "--model", args.arch]
        argv += ["--router", preset, "--json"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            out[preset] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        summary = json.loads(done.stdout)
        out[preset] = {
            "ttft_s": summary["ttft_s"],
            "tpot_s": summary["tpot_s"],
            "prefix_hit_rate": summary["prefix_hit_rate"],
            "gpu_busy": summary.get("gpu_busy"),
        }
    return out


def default_cpus() -> tuple[str | None, str | None, str | None]:
    """(sims, router, client): the router alone on the last CPU, the sims and this client on the others."""
    cpus = os.cpu_count() or 1
    if not shutil.which("taskset") or cpus < 2:
        return None, None, None
    rest = "0" if cpus == 2 else f"0-{cpus - 2}"
    return rest, str(cpus - 1), rest


def parse_args() -> argparse.Namespace:
    sims, router, client = default_cpus()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--routers", default=",".join(DEFAULT_ROUTERS), help=f"of {', '.join(peers.ROUTERS)}")
    p.add_argument("--replicas", type=int, default=4, choices=range(1, 9), metavar="N (1-8)")
    p.add_argument("--gpu", default="H100")
    p.add_argument("--arch", default="llama-3.1-8b")
    p.add_argument(
        "--time-scale", type=positive(float), default=6.0, help="sims run this much faster than the GPU"
    )
    p.add_argument(
        "--speedup", type=positive(float), default=2.0, help="simulated arrivals at this x the trace's rate"
    )
    p.add_argument("--trace", type=Path, default=TRACE)
    p.add_argument("--trace-start-s", type=at_least(0, float), default=0.0)
    p.add_argument(
        "--trace-window-s", type=positive(float), default=900.0, help="seconds of the recorded trace"
    )
    p.add_argument("--conversations", type=fraction, help="share kept (default replicas / 16)")
    p.add_argument("--limit", type=positive(int), help="at most this many requests")
    p.add_argument("--request-timeout-s", type=positive(float), default=60.0, help="real seconds per request")
    p.add_argument("--rounds", type=positive(int), default=1, help="run the routers this many times, in turn")
    p.add_argument(
        "--probes", type=at_least(0, int), default=9, help="idle requests through the router and direct"
    )
    p.add_argument("--probe-tokens", type=positive(int), default=8000, help="prompt length of each probe")
    p.add_argument(
        "--keep-alive", action="store_true", help="reuse connections (shows sglang-router's stall)"
    )
    p.add_argument("--sim-cpus", type=cpu_list, default=sims)
    p.add_argument("--router-cpus", type=cpu_list, default=router)
    p.add_argument("--client-cpus", type=cpu_list, default=client)
    p.add_argument("--cache-dir", type=Path, default=peers.DEFAULT_CACHE)
    p.add_argument("--no-virtual", action="store_true", help="skip the virtual-time reference")
    p.add_argument("--write-trace", type=Path, help="save the slice (simulated-time arrivals) here")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    args.routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    unknown = [r for r in args.routers if r not in peers.ROUTERS]
    if unknown:
        p.error(f"unknown router {', '.join(unknown)}; known: {', '.join(peers.ROUTERS)}")
    if not args.trace.is_file():
        p.error(f"--trace: no file at {args.trace}")
    if args.conversations is None:
        args.conversations = min(1.0, args.replicas / FLEET_OF_RECORD)
    return args


def machine() -> str:
    return f"{os.cpu_count()}-core {platform.machine()}, CPython {platform.python_version()}"


def main() -> None:
    args = parse_args()
    # A SIGTERM unwinds like Ctrl-C, so every `finally` stops the sims and the router it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.client_cpus:
        os.sched_setaffinity(0, cpu_set(args.client_cpus))
    requests = select_slice(args)
    if not requests:
        raise SystemExit(
            "the slice holds no requests: check --trace-start-s, --trace-window-s, --conversations"
        )
    prepared = prepare(requests, args.time_scale)
    gc.collect()
    gc.freeze()  # as the gateway does: no full collection walks the prepared bodies mid-replay
    span_s = prepared[-1].at_s
    print(
        f"{len(requests)} requests, {requests[-1].arrival_s:.0f} simulated s, {span_s:.0f} real s per router "
        f"x {len(args.routers)} routers",
        file=sys.stderr,
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="routing-realtime-") as tmp:
        trace_file = args.write_trace or Path(tmp) / "slice.jsonl"
        write_mooncake(requests, trace_file)
        for round_ in range(1, args.rounds + 1):
            for name in args.routers:
                workdir = Path(tmp) / f"{round_}-{name.replace('/', '-')}"
                workdir.mkdir()
                print(f"round {round_}: {name} ...", file=sys.stderr, flush=True)
                rows.append({"round": round_} | measure(name, args, prepared, workdir))
                print(f"  {progress(rows[-1])}", file=sys.stderr, flush=True)
        presets = [peers.ROUTERS[r].policy for r in args.routers if r.startswith("computenet/")]
        virtual = {} if args.no_virtual else virtual_reference(trace_file, args, [*presets, "round-robin"])
    document = {
        "date": datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "command": " ".join(sys.argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "slice": {"requests": len(requests), "simulated_s": requests[-1].arrival_s, "real_s": span_s},
        "units": "simulated seconds (measured wall time x time_scale); real_time and *_ms: as measured",
        "rows": rows,
        "comparison": [
            report.compare([r for r in rows if r["round"] == n]) for n in range(1, args.rounds + 1)
        ],
        "virtual_time_reference": virtual,
    }
    print(report.markdown(rows))
    print(json.dumps(document, indent=2))
    if args.out:
        args.out.write_text(json.dumps(document, indent=2))


def progress(r: dict[str, Any]) -> str:
    if "error" in r:
        return "error"
    return (
        f"p90 TTFT {r['ttft_s']['p90']:.2f} s, hit {r['prefix_hit_rate'] or 0:.3f}, failed {r['failed']}, "
        f"idle +{r['added_ttft_idle_ms']} ms, pacing {r['sim_pacing_drift_pct']:+.1f} %, "
        f"other load {r['other_cpu_pct']:.0f} %"
    )


if __name__ == "__main__":
    main()
