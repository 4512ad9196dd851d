"""End to end: `computenet up` serving the bundled demo, driven as a user would.

Real processes throughout: `computenet up` as a subprocess, the local pool's `sim`
replicas, the official `openai` SDK and the `computenet` CLI as clients.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .harness import Up, cli, free_port, pid_alive, processes_in_groups, streamed_chat, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with Up(tmp_path_factory.mktemp("state")) as running:
        running.wait_ready("demo-llm", 2)
        yield running


@pytest.fixture
def client(up: Up) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.url + "/v1", api_key="not-needed", max_retries=0)


def test_openai_sdk_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo-llm", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0


def test_openai_sdk_streamed_chat_completion(client: openai.OpenAI) -> None:
    text, usage = streamed_chat(client, "demo-llm", "Count to five", max_tokens=5)
    assert len(text.split()) == 5
    assert usage is not None and usage.completion_tokens == 5


def test_openai_sdk_legacy_completion_and_models(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="demo-llm", prompt="Once upon a time", max_tokens=3)
    assert reply.choices[0].text
    assert [m.id for m in client.models.list()] == ["demo-llm"]


def test_unknown_model_is_404_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(err.value)


def test_a_conversation_returns_to_the_replica_whose_kv_events_report_its_prompt(up: Up) -> None:
    """Replicas publish KV events under `up`; the gateway's precise prefix routing follows them."""
    assert all(r["kvEvents"] for r in up.replicas())
    for topic in ("gravity", "tides", "orbits", "comets", "eclipses"):
        messages = [{"role": "user", "content": f"Tell me about {topic}. " * 40}]
        first = up.http.post("/v1/chat/completions", json={"model": "demo-llm", "messages": messages})
        time.sleep(0.3)  # the replica's events reach the gateway
        messages += [{"role": "assistant", "content": "..."}, {"role": "user", "content": "More?"}]
        second = up.http.post("/v1/chat/completions", json={"model": "demo-llm", "messages": messages})
        assert second.headers["x-computenet-replica"] == first.headers["x-computenet-replica"]
        assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_get_deployments_shows_two_of_two_ready(up: Up) -> None:
    result = cli("get", "deployments", url=up.url)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "MODEL", "ENGINE", "READY"]
    assert row.split()[:4] == ["demo-llm", "demo-llm", "sim", "2/2"]


def test_get_pools_nodes_and_replicas_show_where_replicas_run(up: Up) -> None:
    pools = cli("get", "pools", url=up.url)
    assert pools.returncode == 0, pools.stderr
    header, row = pools.stdout.splitlines()[:2]
    assert header.split()[:7] == ["NAME", "TYPE", "REGION", "NODES", "GPUS", "REPLICAS", "STATUS"]
    assert row.split()[:7] == ["local", "local", "local", "1/1", "0", "2", "Reachable"]
    nodes = cli("get", "nodes", "-o", "json", url=up.url)
    (node,) = json.loads(nodes.stdout)
    assert (node["pool"], node["ready"], node["cpu"] > 0) == ("local", True, True)
    replicas = cli("get", "replicas", "-o", "json", url=up.url)
    assert {r["node"] for r in json.loads(replicas.stdout)} == {node["name"]}


def test_logs_show_replica_output(up: Up) -> None:
    result = cli("logs", "demo-llm-server-0", url=up.url)
    assert result.returncode == 0, result.stderr
    assert "starting (restart 0)" in result.stdout
    missing = cli("logs", "nope-server-0", url=up.url)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_killed_replica_is_restarted_and_no_request_fails(up: Up, client: openai.OpenAI) -> None:
    victim = next(r for r in up.replicas() if r["name"] == "demo-llm-server-0")
    os.kill(victim["pid"], signal.SIGKILL)
    for i in range(200):
        reply = client.chat.completions.create(
            model="demo-llm", messages=[{"role": "user", "content": f"request {i}"}], max_tokens=1
        )
        assert reply.choices[0].message.content, f"request {i} got an empty answer"

    def restarted() -> bool:
        now = next(r for r in up.replicas() if r["name"] == victim["name"])
        return now["restarts"] >= 1 and now["phase"] == "Ready" and now["pid"] != victim["pid"]

    wait_for(restarted, 30, "the killed replica to be restarted and ready")
    up.wait_ready("demo-llm", 2)


def test_bad_file_exits_2_names_the_field_and_changes_nothing(up: Up, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""\
        apiVersion: computenet.io/v1
        kind: Model
        metadata: {name: second-llm}
        spec: {source: sim://second}
        ---
        apiVersion: computenet.io/v1
        kind: Deployment
        metadata: {name: second-llm}
        spec:
          model: second-llm
          engine: sim
          roles: [{name: server, replicas: -1}]
        """)
    )
    result = cli("apply", "-f", str(bad), url=up.url)
    assert result.returncode == 2
    assert "bad.yaml doc 2: spec.roles[0].replicas: must be >= 0, got -1" in result.stderr
    assert "Traceback" not in result.stderr
    models = cli("get", "models", url=up.url).stdout
    assert "second-llm" not in models


def test_apply_a_second_model_serves_it(up: Up, tmp_path: Path, client: openai.OpenAI) -> None:
    manifest = tmp_path / "second.yaml"
    manifest.write_text(
        textwrap.dedent("""\
        apiVersion: computenet.io/v1
        kind: Model
        metadata: {name: tiny-llm}
        spec: {source: sim://tiny}
        ---
        apiVersion: computenet.io/v1
        kind: Deployment
        metadata: {name: tiny-llm}
        spec:
          model: tiny-llm
          engine: sim
          routing: {policy: round_robin}
          roles: [{name: server, replicas: 1}]
        """)
    )
    result = cli("apply", "-f", str(manifest), url=up.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "model.computenet.io/tiny-llm created",
        "deployment.computenet.io/tiny-llm created",
    ]
    up.wait_ready("tiny-llm", 1)
    reply = client.chat.completions.create(model="tiny-llm", messages=[{"role": "user", "content": "hi"}])
    assert reply.model == "tiny-llm"
    assert cli("delete", "deployment", "tiny-llm", url=up.url).returncode == 0
    wait_for(
        lambda: all(r["deployment"] != "tiny-llm" for r in up.replicas()), 30, "tiny-llm replicas to stop"
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny-llm", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_no_replica_outlives_up(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM and Ctrl-C shut down in order; SIGKILL (a crash) leaves it to the kernel."""
    with Up(tmp_path) as running:
        running.wait_ready("demo-llm", 2)
        pids = {r["pid"] for r in running.replicas()}
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        code = running.stop(sig)
        if sig != signal.SIGKILL:
            assert code == 0, running.output()
        wait_for(lambda: not processes_in_groups(pids), 10, "replica processes to be gone")


def test_up_tells_when_the_demo_is_ready(up: Up) -> None:
    wait_for(lambda: "deployment demo-llm: 2/2 replicas ready" in up.output(), 10, "the ready line")
    assert "curl -s " + up.url + "/v1/chat/completions" in up.output()


def test_a_second_up_on_the_same_state_dir_is_refused(up: Up) -> None:
    result = cli("up", "--state-dir", str(up.state_dir), "--port", str(free_port()))
    assert result.returncode == 1
    assert f"another `computenet up` already uses {up.state_dir}" in result.stderr
    assert up.ready_replicas("demo-llm") == 2  # the first one is untouched


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--port", "99999"], "--port: must be a port number 1-65535, got '99999'"),
        (["up", "--state-dir", "/proc/no/such"], "cannot create the state directory /proc/no/such"),
        (["apply", "-f", "/no/such.yaml"], "error: /no/such.yaml: cannot read file"),
        (["get", "gizmos"], "unknown resource type 'gizmos'"),
    ],
)
def test_bad_invocations_say_what_to_fix_without_a_traceback(args: list[str], message: str) -> None:
    result = cli(*args, url="http://127.0.0.1:9")
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
