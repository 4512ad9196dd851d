"""A real multi-node Ray cluster on this machine's loopback, started with the `ray` CLI for a test module.

Each node is one `ray start` run in its own session, so that killing a node is killing exactly the
processes of that session (raylet, its agents, and the worker processes running actors), as a machine
that loses power would; the engines those actors started die with them (the launcher's
PR_SET_PDEATHSIG). `ray stop` is never used: it stops every Ray process of the machine, other tests'
clusters included.

Addresses: every node has its own loopback address (head 127.0.0.2, workers 127.0.0.3 and up), so a
replica's URL says which node it runs on. Not 127.0.0.1: `ray start` replaces that one (and only that
one) with the machine's routable IP, which would expose the engines on the network. Ray's own GCS and
raylet servers listen on every interface whatever the node's address; nothing else here does.

The nodes import ComputeNet from this checkout (`PYTHONPATH`), as a real node would have it installed,
and keep their temporary files (replica logs) under the cluster's temp dir (`TMPDIR`).

No pytest here: `benchmarks/failover.py` starts its clusters with this module too. Without Ray,
`RayCluster` raises `NotInstalled`, which the test suite turns into a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prerequisites import NotInstalled

from computenet.pools import PoolDriver
from computenet.pools.processes import free_port

from ..harness import live_processes

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 60.0
HEAD_IP = "127.0.0.2"
# Node death is noticed by the GCS missing health checks: 3 misses 0.5 s apart here instead of the
# production default (5 misses 3 s apart), so that a killed node is declared dead within seconds.
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
# Two GPU worker nodes (name -> address, GPUs, GPU model) beside a GPU-less head.
GPU_WORKERS = {"h100": ("127.0.0.3", 2, "H100"), "a10g": ("127.0.0.4", 4, "A10G")}


def ray_cli() -> str:
    """The `ray` executable next to this Python; `NotInstalled` when Ray is missing."""
    cli = Path(sys.executable).with_name("ray")
    try:
        import ray  # noqa: F401
    except ImportError:
        cli = Path("/nonexistent")
    if cli.exists():
        return str(cli)
    raise NotInstalled(
        "Ray is not installed (pip install 'computenet[ray]'); the Ray pool tests need a real cluster"
    )


@dataclass
class Node:
    name: str
    ip: str
    session: int  # the `ray start` run's session id: every process of this node carries it


class RayCluster:
    """Head plus workers, each a `ray start` in its own session under one temp dir."""

    def __init__(self, temp_dir: Path) -> None:
        self.cli = ray_cli()
        self.temp_dir = temp_dir
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.client_port = free_port()
        self.client_address = f"ray://{HEAD_IP}:{self.client_port}"  # Ray Client, for drivers off the cluster
        self.nodes: dict[str, Node] = {}

    @classmethod
    @contextlib.contextmanager
    def started(cls, workers: dict[str, tuple[str, int, str]] = GPU_WORKERS) -> Iterator[RayCluster]:
        """A cluster in a fresh temp dir, shut down (every node killed) and its dir removed after."""
        # A short temp dir: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix="cn-ray-"))
        try:
            cluster = cls(temp_dir)
            try:
                cluster.start(workers)
                yield cluster
            finally:
                cluster.shutdown()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def start(self, workers: dict[str, tuple[str, int, str]]) -> None:
        """Start the head, then the workers (`name -> (ip, GPUs, GPU model)`), one at a time: raylets
        starting together on one machine race for the same socket names."""
        head = ["--head", "--port", str(self.port), "--num-gpus", "0", "--include-dashboard=false"]
        head += ["--ray-client-server-port", str(self.client_port), "--dashboard-port", str(free_port())]
        self._wait({"head": self._spawn("head", HEAD_IP, head, FAST_FAILURE_DETECTION)})
        for name, (ip, gpus, model) in workers.items():
            self._wait({name: self._spawn(name, ip, worker_args(gpus, model), {})})

    def kill(self, name: str) -> None:
        """SIGKILL every process of one node and wait until they are gone."""
        node = self.nodes.pop(name)
        deadline = time.monotonic() + 10
        while pids := session_pids(node.session):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of node {name} survive SIGKILL: {pids}")
            time.sleep(0.05)

    def shutdown(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                self.kill(name)

    def _spawn(self, name: str, ip: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        common = ["--node-ip-address", ip, "--num-cpus", "2", "--temp-dir", str(self.temp_dir)]
        common += ["--object-store-memory", str(80 * 2**20), "--disable-usage-stats"]
        common += ["--min-worker-port", "0", "--max-worker-port", "0", "--runtime-env-agent-port", "0"]
        common += ["--dashboard-agent-listen-port", "0", "--metrics-export-port", "0"]
        if name != "head":
            common += ["--address", self.address]
        log = (self.temp_dir / f"{name}.out").open("wb")
        proc = subprocess.Popen(
            [self.cli, "start", *args, *common],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # TMPDIR: replica actors keep their engines' logs under it; the cluster's dir goes at teardown.
            env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(self.temp_dir), **env},
        )
        log.close()
        self.nodes[name] = Node(name, ip, proc.pid)
        return proc

    def _wait(self, starting: dict[str, subprocess.Popen[bytes]]) -> None:
        for name, proc in starting.items():
            try:
                code = proc.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                output = (self.temp_dir / f"{name}.out").read_text(errors="replace")[-3000:]
                self.shutdown()
                raise RuntimeError(f"`ray start` for node {name} failed (exit {code}):\n{output}")


def worker_args(gpus: int, model: str) -> list[str]:
    return ["--num-gpus", str(gpus), "--resources", json.dumps({f"accelerator_type:{model}": 1})]


def session_pids(session: int) -> list[int]:
    """Live (not zombie) processes whose session id is `session`."""
    return live_processes(lambda fields: int(fields[3]) == session)


async def stop_replicas(pool: PoolDriver) -> None:
    """Stop every replica of a Ray pool: `close()` leaves them running, for the next driver to adopt."""
    for state in await pool.replicas():
        await pool.stop(state.name)
