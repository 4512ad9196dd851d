"""`computenet control` and `computenet gateway` as real subprocesses on free 127.0.0.1 ports.

Each runs in its own session (process group), so a test can kill one with everything it
started — as the kernel would when a machine dies — with `kill(signal.SIGKILL)`. No pytest here:
`benchmarks/failover.py` starts its control planes and gateway with this module too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from computenet.pools.processes import free_port

from .harness import live_processes, wait_for

START_TIMEOUT_S = 60.0
LOCAL_POOL = textwrap.dedent(
    """\
    kind: Pool
    metadata: {name: local}
    spec: {type: local, region: local}
    """
)


class Process:
    """One `computenet` subprocess, its output in a file, an HTTP client on its port."""

    def __init__(self, name: str, args: list[str], log_dir: Path, port: int) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.out"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "computenet", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group (SIGKILL: the process and everything it started)."""
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()  # whatever it left in its group
        self.proc.wait()
        self.http.close()
        self._log.close()


class Control(Process):
    """`computenet control --leader-elect` on a store, with its own state directory."""

    def __init__(self, name: str, store_url: str, work: Path, *extra: str) -> None:
        port = free_port()
        state = work / name
        state.mkdir()
        args = ["control", "--store", store_url, "--port", str(port), "--state-dir", str(state)]
        super().__init__(name, [*args, "--leader-elect", "--identity", name, *extra], work, port)

    def api(self, path: str) -> Any:
        response = self.http.get("/api/v1" + path)
        response.raise_for_status()
        return response.json()

    def answers(self) -> bool:
        assert self.alive(), f"{self.name} exited early:\n{self.output()}"
        try:
            return self.http.get("/api/v1/version").status_code == 200
        except httpx.HTTPError:
            return False

    def leading(self) -> bool:
        try:
            return bool(self.api("/leader")["leading"])
        except httpx.HTTPError:
            return False

    def ready_replicas(self, deployment: str) -> int:
        try:
            status = self.api(f"/deployments/{deployment}").get("status") or {}
        except httpx.HTTPError:
            return 0
        return int(status.get("readyReplicas", 0))

    def wait_up(self) -> None:
        wait_for(self.answers, START_TIMEOUT_S, f"{self.name}'s control API")


@contextlib.contextmanager
def control_planes(store_url: str, work: Path) -> Iterator[tuple[Control, Control]]:
    """Two `computenet control --leader-elect` replicas (cp-a, cp-b) on one store, both answering, the
    local pool applied at start; stopped after."""
    pools = work / "pools.yaml"
    pools.write_text(LOCAL_POOL)
    first = Control("cp-a", store_url, work, "-f", str(pools))
    second = Control("cp-b", store_url, work, "-f", str(pools))
    try:
        first.wait_up()
        second.wait_up()
        yield first, second
    finally:
        first.stop()
        second.stop()


def leader_and_follower(first: Control, second: Control, timeout_s: float = 30) -> tuple[Control, Control]:
    """Once one of the two leads: (leader, follower)."""
    wait_for(lambda: first.leading() or second.leading(), timeout_s, "a leader")
    return (first, second) if first.leading() else (second, first)


class GatewayProcess(Process):
    def __init__(self, work: Path, control_url: str) -> None:
        port = free_port()
        args = ["gateway", "--control", control_url, "--port", str(port), "--no-access-log"]
        super().__init__("gateway", args, work, port)

    def models(self) -> list[str]:
        assert self.alive(), f"the gateway exited early:\n{self.output()}"
        try:
            response = self.http.get("/v1/models")
        except httpx.HTTPError:
            return []
        return [m["id"] for m in response.json().get("data", [])] if response.status_code == 200 else []


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (the local pool's replicas of one control plane)."""
    return live_processes(lambda fields: int(fields[1]) == pid)
