"""End to end: the distributed mode on a real PostgreSQL server.

Two `computenet control --leader-elect` processes share one database with a local pool and a
`sim` deployment; a `computenet gateway --control URL` process follows the endpoints they publish.
Only the leader runs replicas. Killed with SIGKILL (its replicas die with it), the leader is
replaced by the other process within 15 s (the issue's bound), nothing applied before is lost,
the deployment is ready again and the gateway routes to the new replicas.
"""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from computenet.cli.main import BUNDLED_DEMO

from .harness import cli, pid_alive, wait_for
from .processes import Control, GatewayProcess, children, control_planes, leader_and_follower

pytestmark = pytest.mark.e2e

TAKEOVER_BOUND_S = 15.0  # the bound for a follower to take over from a killed leader
EXTRA = textwrap.dedent(
    """\
    kind: Tenant
    metadata: {name: acme}
    spec: {}
    ---
    kind: Model
    metadata: {name: spare}
    spec: {source: sim://spare, runtimes: [{engine: sim}]}
    """
)


@pytest.fixture
def planes(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Control, Control]]:
    with control_planes(postgres_url, tmp_path) as planes:
        yield planes


def _chat(gateway: GatewayProcess) -> str:
    """One chat completion through the gateway with the OpenAI SDK; returns the replica that served it."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="not-needed", max_retries=0, timeout=10)
    raw = client.chat.completions.with_raw_response.create(
        model="demo-llm", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert raw.parse().choices[0].message.content
    return raw.headers["x-computenet-replica"]


def _resources(control: Control) -> dict[str, dict[str, object]]:
    """Every resource's spec by kind/name, as the control API serves them."""
    found = {}
    for plural in ("pools", "models", "deployments", "tenants"):
        for item in control.api(f"/{plural}")["items"]:
            found[f"{item['kind']}/{item['metadata']['name']}"] = item["spec"]
    return found


def test_one_leader_reconciles_and_a_killed_leader_is_replaced_within_15s(
    planes: tuple[Control, Control], tmp_path: Path
) -> None:
    leader, follower = leader_and_follower(*planes)
    assert not follower.leading()

    # Writes go through either replica: here the follower's API.
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    for manifest in (BUNDLED_DEMO, extra):
        applied = cli("apply", "-f", str(manifest), url=follower.url)
        assert applied.returncode == 0, applied.stderr
    wait_for(lambda: follower.ready_replicas("demo-llm") >= 2, 60, "demo-llm to be ready")

    # Only the leader runs replicas; the follower runs none and says who knows them.
    assert len(children(leader.pid)) == 2 and children(follower.pid) == []
    assert {r["phase"] for r in leader.api("/replicas")["items"]} == {"Ready"}
    refused = follower.http.get("/api/v1/replicas")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_leader"
    lease = follower.api("/leader")
    assert lease["holder"] == leader.name and not lease["leading"]

    gateway = GatewayProcess(tmp_path, follower.url)
    try:
        wait_for(lambda: gateway.models() == ["demo-llm"], 30, "the gateway to learn demo-llm")
        before_replicas = {r["name"]: r["pid"] for r in leader.api("/replicas")["items"]}
        assert _chat(gateway) in before_replicas
        before = _resources(follower)

        old_pids = children(leader.pid)
        killed_at = time.monotonic()
        leader.kill(signal.SIGKILL)
        wait_for(lambda: follower.leading(), TAKEOVER_BOUND_S + 5, "the follower to take over")
        took_over_s = time.monotonic() - killed_at
        print(f"takeover after {took_over_s:.1f}s")
        assert took_over_s < TAKEOVER_BOUND_S, f"takeover took {took_over_s:.1f}s"
        assert not any(pid_alive(pid) for pid in old_pids)  # the old leader's replicas died with it

        # Nothing lost: every resource is as it was, and the deployment is served again.
        assert _resources(follower) == before
        wait_for(lambda: len(children(follower.pid)) == 2, 60, "the new leader's replicas")
        wait_for(lambda: follower.ready_replicas("demo-llm") >= 2, 60, "demo-llm to be ready again")
        after_replicas = {r["pid"] for r in follower.api("/replicas")["items"]}
        assert after_replicas == set(children(follower.pid))
        served = wait_for(lambda: _try_chat(gateway), 30, "the gateway to route to the new replicas")
        assert served in {r["name"] for r in follower.api("/replicas")["items"]}
        assert follower.api("/leader")["transitions"] == 1
    finally:
        gateway.stop()


def _try_chat(gateway: GatewayProcess) -> str | None:
    try:
        return _chat(gateway)
    except openai.APIError:
        return None
