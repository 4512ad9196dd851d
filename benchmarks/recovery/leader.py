"""Control-plane leader takeover on PostgreSQL, one run.

Two `computenet control --leader-elect` replicas (default lease timings) on a fresh database of one real
PostgreSQL server, the local pool, the demo deployment (two `sim` replicas) and a `computenet gateway
--control URL` following the replica that will survive. Under steady traffic through the gateway the
leader is killed with SIGKILL, its process group with it (its replicas are its children, as on a
machine that dies), and the follower's answers are polled every `POLL_S`. One PostgreSQL server serves
every run, each on a fresh database.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from e2e.harness import cli, wait_for
from e2e.processes import Control, GatewayProcess, control_planes, leader_and_follower
from postgres_server import PostgresServer
from prerequisites import NotInstalled

from computenet.cli.main import BUNDLED_DEMO
from computenet.control.leader import LeaseTimings

from . import one_line
from .traffic import Traffic

DEPLOYMENT = "demo-llm"
POLL_S = 0.1
RECOVERY_TIMEOUT_S = 120.0
SETTLE_S = 1.0  # traffic before the kill, and after recovery
# The lease is renewed, and tried by the follower, once a retry period: a kill at a random point of it
# samples the takeover's spread, where a kill at a fixed delay after the start would hit one phase only.
JITTER_S = LeaseTimings().retry_period_s


@dataclass(frozen=True)
class LeaderRun:
    takeover_s: float  # (a) the follower's GET /api/v1/leader says it leads
    ready_s: float  # (b) the deployment's status: readyReplicas 2, Ready since after the kill
    served_s: float  # (c) a request sent after the kill has streamed to its end through the gateway
    requests: int  # sent in the run, from before the kill to SETTLE_S after recovery
    failed: int  # answered with an error, or not at all, before their first byte
    broken: int  # cut after their first byte


def runs(count: int, work: Path, interval_s: float) -> Iterator[LeaderRun | str]:
    """`count` runs on one PostgreSQL server, a fresh database each; a run that failed yields its error."""
    with PostgresServer.started() as server:
        for index in range(1, count + 1):
            try:
                yield run(server, work / f"leader-{index}", interval_s)
            except NotInstalled:
                raise
            except (AssertionError, RuntimeError, httpx.HTTPError) as exc:
                yield one_line(exc)


def run(server: PostgresServer, work: Path, interval_s: float) -> LeaderRun:
    work.mkdir(parents=True)
    with control_planes(server.create_database(), work) as planes:
        leader, follower = leader_and_follower(*planes)
        applied = cli("apply", "-f", str(BUNDLED_DEMO), url=follower.url)
        if applied.returncode != 0:
            raise RuntimeError(f"computenet apply failed: {applied.stderr.strip()}")
        wait_for(lambda: follower.ready_replicas(DEPLOYMENT) >= 2, 60, f"{DEPLOYMENT} to be ready")
        gateway = GatewayProcess(work, follower.url)
        try:
            wait_for(lambda: gateway.models() == [DEPLOYMENT], 30, "the gateway to learn the deployment")
            traffic = Traffic(gateway.url, DEPLOYMENT, interval_s)
            with traffic.in_thread():
                wait_for(lambda: traffic.count("ok"), 30, "traffic to flow")
                time.sleep(SETTLE_S + random.uniform(0, JITTER_S))
                killed_at, takeover_s, ready_s = _kill_and_watch(leader, follower)
                served = wait_for(
                    lambda: traffic.first_ok_sent_after(killed_at), RECOVERY_TIMEOUT_S, "a request served"
                )
                time.sleep(SETTLE_S)
        finally:
            gateway.stop()
    return LeaderRun(
        takeover_s=takeover_s,
        ready_s=ready_s,
        served_s=served.ended_at - killed_at,
        requests=len(traffic.requests),
        failed=traffic.count("failed"),
        broken=traffic.count("broken"),
    )


def _kill_and_watch(leader: Control, follower: Control) -> tuple[float, float, float]:
    """Kill the leader; when, and how many seconds later the follower led and the replicas were ready."""
    killed_wall, killed_at = datetime.now().astimezone(), time.monotonic()
    leader.kill(signal.SIGKILL)
    wait_for(follower.leading, RECOVERY_TIMEOUT_S, "the follower to take over", POLL_S)
    takeover_s = time.monotonic() - killed_at
    wait_for(lambda: _ready_since(follower, killed_wall), RECOVERY_TIMEOUT_S, "the replicas", POLL_S)
    return killed_at, takeover_s, time.monotonic() - killed_at


def _ready_since(control: Control, moment: datetime) -> bool:
    """Both replicas ready, by a status the new leader wrote: its Ready condition turned True after
    `moment` (the dead leader's status said 2 ready replicas too, until the new leader's first pass)."""
    try:
        status = control.api(f"/deployments/{DEPLOYMENT}").get("status") or {}
    except httpx.HTTPError:  # the API answers throughout, but a poll may time out on a loaded machine
        return False
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    if ready is None or ready["status"] != "True" or status.get("readyReplicas", 0) < 2:
        return False
    return datetime.fromisoformat(ready["lastTransitionTime"]) > moment
