"""What a gateway costs per request: ComputeNet's against LiteLLM, sglang-router and vllm-router.

    .venv/bin/python benchmarks/gateway_overhead.py
        [--targets computenet,litellm,sglang-router,vllm-router,vllm-router-rr]
        [--requests 2000] [--duration 10] [--soak-seconds 600] [--workers N] [--out results.json]

A fake OpenAI upstream that answers at once (`gateway/upstream.py`: 16-token JSON
completions, 64-chunk SSE streams) and a closed-loop load generator (`gateway/loadgen.py`,
a new process per phase) share CPU 0; the gateway under test runs alone on CPU 1
(`taskset`). The peers come from their own virtual environments, installed on first use
(`gateway/peers.py`). Each target, the upstream alone ("direct") first, goes through:

* JSON at concurrency 1 (`--requests`, capped at `--c1-max-s` seconds), then streams at
  concurrency 1 (a quarter as many): the gateway's added latency is its p50 / p99 minus
  direct's, to the last byte;
* JSON, then streams, at concurrency 64 for `--duration` seconds: requests per second.
  With the upstream and the client sharing one core, that core may be the ceiling, so
* the gateway's CPU time per request (every thread of its process tree, sampled just
  around each measured phase) is the capacity figure that compares fairly: 1 / it is
  the requests per second one core could carry;
* RSS of the gateway's process tree after the run; failed requests in every phase;
* "other load": busy CPU time of the machine that none of our processes explain, in % of
  one core, the worst phase of the target. Above a few % a neighbour was running and the
  row is not clean.

`--soak-seconds N` then keeps ComputeNet under c=64 mixed load (one connection in four
streams) for N seconds, sampling RSS every 10 s. Prints a markdown table and writes all
figures as JSON. Everything binds 127.0.0.1; the run ends by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import peers, proctree
from gateway.flags import cpu_list, cpu_set
from gateway.proctree import pinned

HERE = Path(__file__).resolve().parent
UPSTREAM = HERE / "gateway" / "upstream.py"
LOADGEN = HERE / "gateway" / "loadgen.py"
SOAK_SAMPLE_S = 10.0
NOISY_PCT = 10  # other work on the machine, in % of one core, above which a row is suspect


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str  # json, stream or mixed
    concurrency: int
    requests: int
    duration_s: float
    warmup_requests: int
    warmup_s: float


def phases(args: argparse.Namespace) -> list[Phase]:
    c = args.concurrency
    return [
        Phase("json_c1", "json", 1, args.requests, args.c1_max_s, 200, 5.0),
        Phase("stream_c1", "stream", 1, max(1, args.requests // 4), args.c1_max_s, 50, 5.0),
        Phase(f"json_c{c}", "json", c, 10**9, args.duration, 2 * c, 3.0),
        Phase(f"stream_c{c}", "stream", c, 10**9, args.duration, 2 * c, 3.0),
    ]


def start_upstream(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        pinned(args.client_cpus, [sys.executable, str(UPSTREAM), "--port", "0", "--model", peers.MODEL]),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        raise SystemExit(f"the fake upstream did not start: {line}")
    return proc, f"http://127.0.0.1:{line[1]}"


def post_ok(url: str, api_key: str | None) -> bool:
    body = json.dumps({"model": peers.MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Gateway:
    """A started peer: its process group is ours to stop."""

    def __init__(self, peer: peers.Peer, args: argparse.Namespace, upstream: str, workdir: Path) -> None:
        self.peer = peer
        self.venv = peers.ensure_installed(peer, args.cache_dir)
        self.port = peers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.launch = peer.launch(self.venv, self.port, upstream, workdir, args)
        self.log = workdir / f"{peer.name}.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it and wait until it answers a completion; seconds that took."""
        problem = peers.missing_command(self.peer, self.launch)
        if problem:
            raise RuntimeError(problem)
        t0 = time.perf_counter()
        argv = pinned(self.args.gateway_cpus, self.launch.argv)
        self.proc = proctree.spawn(argv, self.log, env=self.launch.env, cwd=self.log.parent)
        while not post_ok(self.url, self.launch.api_key):
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode}:\n{log_tail(self.log)}")
            if time.perf_counter() - t0 > self.peer.ready_timeout_s:
                raise RuntimeError(f"not ready in {self.peer.ready_timeout_s:.0f} s:\n{log_tail(self.log)}")
            time.sleep(0.25)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None:
            proctree.stop_group(self.proc, 15)


@dataclass(frozen=True)
class Endpoint:
    """Where the load goes, and whose CPU time to account for."""

    url: str
    api_key: str | None
    gateway_pid: int | None  # None for the upstream alone
    upstream_pid: int


def cpu_snapshot(pids: list[int]) -> list[float]:
    """System busy time, then each process tree's CPU time: the difference is everyone else's."""
    return [proctree.system_busy_s(), *(proctree.tree_cpu_s(pid) for pid in pids)]


def account(result: dict[str, Any], before: list[float], after: list[float], gateway: bool) -> None:
    delta = [b - a for a, b in zip(before, after, strict=True)]
    done = result.get("ok", 0) + result.get("failed", 0)
    elapsed = result.get("elapsed_s") or 0
    if gateway and done:
        result["gateway_cpu_s"] = round(delta[1], 4)
        result["cpu_ms_per_request"] = round(delta[1] * 1000 / done, 4)
    if elapsed >= 0.5:  # /proc/stat counts 10 ms ticks: in a shorter phase the gauge is all noise
        # Busy time of the whole machine that none of ours explains: other work on a shared VM.
        result["other_cpu_pct"] = round(max(0.0, delta[0] - sum(delta[1:])) / elapsed * 100, 1)


def run_phase(
    phase: Phase,
    endpoint: Endpoint,
    args: argparse.Namespace,
    rss_samples: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """One load generator process: warm up, then measure with CPU times sampled just around it."""
    argv = [sys.executable, str(LOADGEN), "--url", endpoint.url, "--kind", phase.kind, "--handshake"]
    argv += ["--concurrency", str(phase.concurrency), "--requests", str(phase.requests)]
    argv += ["--duration-s", str(phase.duration_s), "--warmup-requests", str(phase.warmup_requests)]
    argv += ["--warmup-s", str(phase.warmup_s), "--model", peers.MODEL, "--timeout-s", "60"]
    if endpoint.api_key:
        argv += ["--api-key", endpoint.api_key]
    proc = subprocess.Popen(
        pinned(args.client_cpus, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    first = proc.stdout.readline()
    if first.strip() != "warm":
        proc.stdin.close()
        code = proc.wait()
        return {"error": f"warm-up failed (exit code {code}): {first.strip() or 'no output'}"}
    pids = [pid for pid in (endpoint.gateway_pid, endpoint.upstream_pid, proc.pid) if pid]
    before = cpu_snapshot(pids)
    t0 = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while rss_samples is not None and endpoint.gateway_pid:
        if select.select([proc.stdout], [], [], SOAK_SAMPLE_S)[0]:
            break
        rss = proctree.tree_rss_mib(endpoint.gateway_pid)
        rss_samples.append((round(time.perf_counter() - t0, 1), round(rss, 1)))
    line = proc.stdout.readline()
    after = cpu_snapshot(pids)
    proc.stdin.close()  # the load generator waits for this to exit, so its CPU time could be read
    code = proc.wait()
    if not line.strip():
        return {"error": f"the load generator printed nothing and exited with code {code}"}
    result: dict[str, Any] = json.loads(line)
    account(result, before, after, endpoint.gateway_pid is not None)
    return result


def measure(name: str, args: argparse.Namespace, upstream: Endpoint, workdir: Path) -> dict[str, Any]:
    """Every phase against one target; the upstream itself when `name` is "direct"."""
    out: dict[str, Any] = {"name": name, "phases": {}}
    gateway = None
    endpoint = upstream
    if name == "direct":
        out["version"] = "fake upstream"
    else:
        peer = peers.PEERS[name]
        gateway = Gateway(peer, args, upstream.url, workdir)
        out["version"] = peers.version(peer, gateway.venv)
        out["command"] = " ".join(gateway.launch.argv)
        out["env"] = gateway.launch.env
        try:
            out["ready_s"] = round(gateway.start(), 2)
        except RuntimeError as exc:
            gateway.stop()
            out["error"] = str(exc)
            print(f"{name}: cannot be measured: {exc}", file=sys.stderr, flush=True)
            return out
        assert gateway.proc is not None
        endpoint = Endpoint(gateway.url, gateway.launch.api_key, gateway.proc.pid, upstream.upstream_pid)
    try:
        for phase in phases(args):
            print(f"{name}: {phase.name} ...", file=sys.stderr, flush=True)
            out["phases"][phase.name] = result = run_phase(phase, endpoint, args)
            print(f"  {short(result)}", file=sys.stderr, flush=True)
        if endpoint.gateway_pid:
            out["rss_mib"] = round(proctree.tree_rss_mib(endpoint.gateway_pid), 1)
            out["pss_mib"] = round(proctree.tree_pss_mib(endpoint.gateway_pid), 1)
            out["processes"] = len(proctree.tree(endpoint.gateway_pid))
            if name == "computenet" and args.soak_seconds > 0:
                out["soak"] = soak(endpoint, args)
    finally:
        if gateway is not None:
            gateway.stop()
    return out


def soak(endpoint: Endpoint, args: argparse.Namespace) -> dict[str, Any]:
    assert endpoint.gateway_pid is not None
    phase = Phase("soak", "mixed", args.concurrency, 10**9, args.soak_seconds, 2 * args.concurrency, 3.0)
    print(f"computenet: soak for {args.soak_seconds} s ...", file=sys.stderr, flush=True)
    samples: list[tuple[float, float]] = []
    result = run_phase(phase, endpoint, args, rss_samples=samples)
    samples.append((round(args.soak_seconds, 1), round(proctree.tree_rss_mib(endpoint.gateway_pid), 1)))
    # The first sample (10 s in, after the warm-up) is the baseline: pools and caches are full by then.
    first, last = samples[0][1], samples[-1][1]
    result.update(
        rss_samples=samples,
        rss_first_mib=first,
        rss_last_mib=last,
        rss_max_mib=max(rss for _, rss in samples),
        rss_growth_pct=round((last - first) / first * 100, 1) if first else None,
    )
    return result


def short(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    kinds = ", ".join(
        f"{k} p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms" for k, v in result["by_kind"].items()
    )
    cpu = f", gateway CPU {result['cpu_ms_per_request']:.3f} ms/req" if "cpu_ms_per_request" in result else ""
    noise = f", other work on the machine {result.get('other_cpu_pct')} % of a core"
    return f"{result['ok']} ok, {result['failed']} failed, {result['rps']} req/s, {kinds}{cpu}{noise}"


def machine() -> dict[str, Any]:
    model = ""
    if shutil.which("lscpu"):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def phase_stat(target: dict[str, Any], phase: str, key: str) -> float | None:
    result = target.get("phases", {}).get(phase, {})
    if key in ("rps", "cpu_ms_per_request", "failed"):
        return result.get(key)  # type: ignore[no-any-return]
    for summary in result.get("by_kind", {}).values():
        return summary.get(key)  # type: ignore[no-any-return]
    return None


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def added(target: dict[str, Any], direct: dict[str, Any], phase: str) -> str:
    parts = []
    for key in ("p50_ms", "p99_ms"):
        mine, base = phase_stat(target, phase, key), phase_stat(direct, phase, key)
        parts.append(fmt(None if mine is None or base is None else mine - base))
    return " / ".join(parts)


def max_other_pct(target: dict[str, Any]) -> float:
    return max((p.get("other_cpu_pct", 0.0) for p in target.get("phases", {}).values()), default=0.0)


def table(results: list[dict[str, Any]], c: int) -> str:
    head = (
        f"| target | version | JSON added p50 / p99 ms | stream added p50 / p99 ms | JSON req/s c={c} "
        f"| streams/s c={c} | CPU ms / JSON req (c=1 / c={c}) | CPU ms / stream (c=1 / c={c}) "
        "| RSS MiB | failed | other load % |"
    )
    rows = [head, "|" + " --- |" * 11]
    direct = results[0]
    for target in results:
        name, version = target["name"], target.get("version", "")
        if "error" in target:
            rows.append(
                f"| {name} | {version} | not measured: {target['error'].splitlines()[0]} |" + " |" * 8
            )
            continue
        if name == "direct":
            latencies = [
                f"({fmt(phase_stat(target, p, 'p50_ms'))} / {fmt(phase_stat(target, p, 'p99_ms'))} baseline)"
                for p in ("json_c1", "stream_c1")
            ]
        else:
            latencies = [added(target, direct, "json_c1"), added(target, direct, "stream_c1")]
        cpu = [
            f"{fmt(phase_stat(target, f'{k}_c1', 'cpu_ms_per_request'), 3)} / "
            f"{fmt(phase_stat(target, f'{k}_c{c}', 'cpu_ms_per_request'), 3)}"
            for k in ("json", "stream")
        ]
        failed = sum(int(p.get("failed", 0)) for p in target["phases"].values())
        errors = sum(1 for p in target["phases"].values() if "error" in p)
        rps = [fmt(phase_stat(target, f"{k}_c{c}", "rps"), 0) for k in ("json", "stream")]
        broke = f" ({errors} phases broke)" if errors else ""
        noise = max_other_pct(target)
        rows.append(
            f"| {name} | {version} | {latencies[0]} | {latencies[1]} | {rps[0]} | {rps[1]} | "
            f"{cpu[0]} | {cpu[1]} | {fmt(target.get('rss_mib'), 0)} | {failed}{broke} | {fmt(noise, 0)} |"
        )
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]) if __doc__ else None,
    )
    parser.add_argument("--targets", default="computenet,litellm,sglang-router,vllm-router,vllm-router-rr")
    parser.add_argument(
        "--requests", type=int, default=2000, help="JSON requests at c=1 (streams: a quarter)"
    )
    parser.add_argument("--c1-max-s", type=float, default=10.0, help="cap on each c=1 phase, for slow peers")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each c=64 phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="ComputeNet only: mixed c=64 load")
    parser.add_argument("--workers", type=int, default=None, help="passed to `computenet gateway`")
    parser.add_argument(
        "--gateway-cpus", type=cpu_list, default="1", help="taskset list for the gateway ('' = no pinning)"
    )
    parser.add_argument(
        "--client-cpus", type=cpu_list, default="0", help="taskset list for the upstream and load generator"
    )
    parser.add_argument("--cache-dir", type=Path, default=peers.DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: under --cache-dir)")
    args = parser.parse_args()
    unknown = [t for t in args.targets.split(",") if t and t not in peers.PEERS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {', '.join(peers.PEERS)}")
    if (args.gateway_cpus or args.client_cpus) and not shutil.which("taskset"):
        parser.error(
            "taskset (util-linux) is missing: install it, or pass --gateway-cpus '' --client-cpus ''"
        )
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = args.cache_dir / "runs" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    if args.client_cpus:  # this process only waits, but keep it off the gateway's core too
        os.sched_setaffinity(0, cpu_set(args.client_cpus))
    upstream_proc, upstream_url = start_upstream(args)
    upstream = Endpoint(upstream_url, None, None, upstream_proc.pid)
    results = []
    try:
        for name in ["direct", *[t for t in args.targets.split(",") if t]]:
            results.append(measure(name, args, upstream, workdir))
    finally:
        proctree.stop_group(upstream_proc, 10)
    report: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "phases": [asdict(p) for p in phases(args)],
        "targets": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = args.out or workdir / "gateway_overhead.json"
    out.write_text(json.dumps(report, indent=2))
    info = report["machine"]
    print(f"\n{report['date']}, {info['cpus']} CPUs ({info['cpu_model']}), CPython {info['python']}")
    print(table(results, args.concurrency))
    for target in results:
        if "soak" in target:
            s = target["soak"]
            rss = f"RSS first {s.get('rss_first_mib')} MiB, last {s.get('rss_last_mib')} MiB, "
            rss += f"max {s.get('rss_max_mib')} MiB ({s.get('rss_growth_pct')} %)"
            print(
                f"\nsoak {args.soak_seconds:.0f} s, mixed c={args.concurrency}: {s.get('ok')} ok, "
                f"{s.get('failed')} failed; {rss}"
            )
    noisy = [t["name"] for t in results if max_other_pct(t) > NOISY_PCT]
    if noisy:
        print(
            f"\nother work took over {NOISY_PCT} % of a core while measuring {', '.join(noisy)}: rerun them"
        )
    print(f"\nwall time {report['wall_s']} s; JSON: {out}; gateway logs: {workdir}")


if __name__ == "__main__":
    main()
