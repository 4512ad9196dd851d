"""How fast `computenet up` gets to serving, and what the gateway adds per request.

    .venv/bin/python benchmarks/foundation.py [--requests 500]

Starts `computenet up` with two `sim` replicas set to answer instantly (a time scale
of 1e9 makes every simulated step take no real time), so what is measured is
ComputeNet itself: the time from launch until both replicas are ready and the first
completion comes back, then the latency of sequential one-token chat completions
sent straight to a replica and through the gateway. Everything runs on 127.0.0.1; the run ends by itself.
"""

from __future__ import annotations

import argparse
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from computenet.pools.processes import free_port

MANIFEST = """
apiVersion: computenet.io/v1
kind: Model
metadata: {name: bench-llm}
spec: {source: sim://bench}
---
apiVersion: computenet.io/v1
kind: Deployment
metadata: {name: bench-llm}
spec:
  model: bench-llm
  engine: sim
  engineArgs: {time_scale: 1000000000}
  roles: [{name: server, replicas: 2}]
"""
BODY = {"model": "bench-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def latencies_ms(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.post(url, json=BODY).raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms, mean {statistics.fmean(samples):.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="computenet-bench-"))
    (state / "bench.yaml").write_text(MANIFEST)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "computenet",
            "up",
            "-f",
            str(state / "bench.yaml"),
            "--state-dir",
            str(state),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=10) as client:
            while True:
                try:
                    if client.post(base + "/v1/chat/completions", json=BODY).status_code == 200:
                        ready = client.get(base + "/api/v1/deployments/bench-llm").json()["status"][
                            "readyReplicas"
                        ]
                        if ready == 2:
                            break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - t0 > 60:
                    raise SystemExit("computenet up did not become ready in 60 s")
                time.sleep(0.02)
            startup_s = time.perf_counter() - t0
            replica = client.get(base + "/api/v1/replicas").json()["items"][0]["url"]
            latencies_ms(client, base + "/v1/chat/completions", 50)  # warm up both paths
            latencies_ms(client, replica + "/v1/chat/completions", 50)
            direct = latencies_ms(client, replica + "/v1/chat/completions", args.requests)
            gateway = latencies_ms(client, base + "/v1/chat/completions", args.requests)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"startup: launch -> 2/2 ready and first completion: {startup_s:.2f} s")
    print(f"direct to replica ({args.requests} sequential): {summary(direct)}")
    print(f"through gateway   ({args.requests} sequential): {summary(gateway)}")
    added = statistics.median(gateway) - statistics.median(direct)
    print(f"gateway adds (p50): {added:.2f} ms")


if __name__ == "__main__":
    main()
