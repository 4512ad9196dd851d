"""A few real-time `sim` replicas on loopback: started fresh, read, and stopped, for routing benchmarks.

Every replica is its own `python -m computenet.engines.sim` process (its own process
group, so stopping it takes whatever it started), pinned with `taskset` when CPUs are
given, with vLLM-format KV events on a PUB socket and a replay socket. What the
benchmark reads from each:

* `/metrics`: vLLM's prefix-cache counters (`vllm:prefix_cache_queries_total`,
  `vllm:prefix_cache_hits_total`, in tokens), `vllm:num_preemptions_total`, the prompt
  tokens each replica took (how evenly a router spread the work) and the engine's own
  TTFT sum and count (from the request reaching the sim: no router, no client);
* `/sim/stats`: the summed planned step time against the wall time that passed, so a
  run can tell whether the replicas kept the simulated GPU's pace on a busy CPU.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .peers import Worker, free_port
from .proctree import pinned, signal_group, spawn

HEALTH_TIMEOUT_S = 60.0
COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:time_to_first_token_seconds_sum",  # wall seconds in the sim, from its parsed request on
    "vllm:time_to_first_token_seconds_count",
)


@dataclass(frozen=True)
class SimSpec:
    """What every replica of a fleet simulates, and where it may run."""

    model: str  # the served name
    gpu: str
    arch: str
    time_scale: float
    cpus: str | None  # taskset list, or None to leave them unpinned


@dataclass
class SimFleet:
    spec: SimSpec
    replicas: int
    logdir: Path
    workers: list[Worker] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        """Start every replica, then wait until all answer /health."""
        for i in range(self.replicas):
            worker = Worker(
                f"http://127.0.0.1:{free_port()}",
                f"tcp://127.0.0.1:{free_port()}",
                f"tcp://127.0.0.1:{free_port()}",
            )
            self.procs.append(spawn(self.argv(worker), self.logdir / f"sim-{i}.log"))
            self.workers.append(worker)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        for i, worker in enumerate(self.workers):
            while not _ok(worker.url + "/health"):
                if self.procs[i].poll() is not None or time.monotonic() > deadline:
                    tail = (self.logdir / f"sim-{i}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"sim {i} did not become healthy:\n{tail}")
                time.sleep(0.1)

    def argv(self, worker: Worker) -> list[str]:
        spec = self.spec
        port = worker.url.rsplit(":", 1)[1]
        argv = [sys.executable, "-m", "computenet.engines.sim", "--model", spec.model, "--host", "127.0.0.1"]
        argv += ["--port", port, "--gpu", spec.gpu, "--arch", spec.arch, "--time-scale", str(spec.time_scale)]
        assert worker.kv_events is not None and worker.kv_events_replay is not None
        argv += [
            "--kv-events-endpoint",
            worker.kv_events,
            "--kv-events-replay-endpoint",
            worker.kv_events_replay,
        ]
        return pinned(spec.cpus, argv)

    def counters(self) -> list[dict[str, float]]:
        """The counters of `COUNTERS`, one dictionary per replica."""
        out = []
        for worker in self.workers:
            found = dict.fromkeys(COUNTERS, 0.0)
            for line in _get(worker.url + "/metrics").decode().splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in found:
                    found[name] += float(line.rsplit(" ", 1)[1])
            out.append(found)
        return out

    def reset_caches(self) -> None:
        """Forget every cached block (each sim publishes AllBlocksCleared); needs the replicas idle."""
        for worker in self.workers:
            request = urllib.request.Request(worker.url + "/reset_prefix_cache", data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()

    def pacing(self) -> dict[str, float]:
        """`/sim/stats` summed over the replicas: planned and actual step seconds, steps, lag."""
        total = {"planned_s": 0.0, "actual_s": 0.0, "steps": 0.0, "max_lag_s": 0.0}
        for worker in self.workers:
            stats = json.loads(_get(worker.url + "/sim/stats"))
            for key in ("planned_s", "actual_s", "steps"):
                total[key] += float(stats[key])
            total["max_lag_s"] = max(total["max_lag_s"], float(stats["max_lag_s"]))
        return total

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """SIGTERM every replica's process group, SIGKILL what is left after 10 s."""
        for proc in self.procs:
            signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                proc.wait(5)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
