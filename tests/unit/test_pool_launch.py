"""What the local pool starts: the rendered command lines, KV events and the roles' KV connectors. Pure."""

from __future__ import annotations

import json
import sys

from computenet.api import Deployment, Model, load_text
from computenet.control.desired import desired_replicas
from computenet.pools import ReplicaSpec
from computenet.pools.local import render_launch
from computenet.pools.processes import free_ports

PORTS = (8001, 5557, 5558)


def spec(engine: str, **args: str | int) -> ReplicaSpec:
    return ReplicaSpec("r-0", "r", "server", engine, "llm", "org/llm", args)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_a_sim_replica_publishes_kv_events_on_the_pools_ports() -> None:
    launch = render_launch(spec("sim"), "127.0.0.1", PORTS, kv_events=True)
    assert launch.argv[:3] == [sys.executable, "-m", "computenet.engines.sim"]
    assert flag(launch.argv, "--port") == "8001"
    assert flag(launch.argv, "--kv-events-endpoint") == "tcp://127.0.0.1:5557"
    assert flag(launch.argv, "--kv-events-replay-endpoint") == "tcp://127.0.0.1:5558"
    assert (launch.kv_events, launch.kv_events_replay) == ("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558")
    assert launch.env is None


def test_a_vllm_replica_gets_its_kv_events_config_and_a_fixed_hash_seed() -> None:
    launch = render_launch(spec("vllm", max_num_seqs=8), "127.0.0.1", PORTS, kv_events=True)
    argv = launch.argv
    assert argv[:3] == ["vllm", "serve", "org/llm"] and flag(argv, "--max-num-seqs") == "8"
    config = json.loads(flag(argv, "--kv-events-config"))
    assert config == {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": "tcp://*:5557",  # vLLM binds its PUB socket only for a wildcard address
        "replay_endpoint": "tcp://127.0.0.1:5558",
        "topic": "kv-events",
    }
    assert launch.env == {"PYTHONHASHSEED": "0"}
    assert (launch.kv_events, launch.kv_events_replay) == ("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558")


def test_kv_events_the_args_configure_are_kept_and_followed() -> None:
    own = json.dumps(
        {"enable_kv_cache_events": True, "endpoint": "tcp://*:6000", "replay_endpoint": "tcp://*:6001"}
    )
    launch = render_launch(spec("vllm", kv_events_config=own), "127.0.0.1", PORTS, kv_events=True)
    assert flag(launch.argv, "--kv-events-config") == own and launch.argv.count("--kv-events-config") == 1
    assert (launch.kv_events, launch.kv_events_replay) == ("tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001")
    sim = render_launch(
        spec("sim", **{"kv-events-endpoint": "tcp://127.0.0.1:7000"}), "127.0.0.1", PORTS, kv_events=True
    )
    assert sim.argv.count("--kv-events-endpoint") == 1 and sim.kv_events == "tcp://127.0.0.1:7000"
    assert "--kv-events-replay-endpoint" not in sim.argv and sim.kv_events_replay is None


def test_without_kv_events_or_for_other_engines_nothing_is_added() -> None:
    off = render_launch(spec("sim"), "127.0.0.1", PORTS, kv_events=False)
    assert "--kv-events-endpoint" not in off.argv and off.kv_events is None
    sglang = render_launch(spec("sglang"), "127.0.0.1", PORTS, kv_events=True)
    assert not any(a.startswith("--kv-events") for a in sglang.argv) and sglang.env is None


def test_free_ports_are_distinct() -> None:
    assert len(set(free_ports(8))) == 8


PD_MANIFEST = """
kind: Model
metadata: {name: llm}
spec: {source: org/llm}
---
kind: Deployment
metadata: {name: pd}
spec:
  model: llm
  engine: ENGINE
  roles:
    - {name: prefill, replicas: 1}
    - {name: decode, replicas: 2, engineArgs: {kv_link_gbps: 25}}
"""


def _pd(engine: str) -> list[ReplicaSpec]:
    model, deployment = load_text(PD_MANIFEST.replace("ENGINE", engine))
    assert isinstance(model, Model) and isinstance(deployment, Deployment)
    return desired_replicas(deployment, model)


def test_prefill_and_decode_sims_start_as_the_two_sides_of_a_kv_connector() -> None:
    replicas = {r.name: r for r in _pd("sim")}
    assert sorted(replicas) == ["pd-decode-0", "pd-decode-1", "pd-prefill-0"]
    prefill = render_launch(replicas["pd-prefill-0"], "127.0.0.1", PORTS, kv_events=True).argv
    decode = render_launch(replicas["pd-decode-0"], "127.0.0.1", PORTS, kv_events=True).argv
    assert json.loads(flag(prefill, "--kv-transfer-config")) == {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_producer",
    }
    assert json.loads(flag(decode, "--kv-transfer-config")) == {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_consumer",
    }
    assert flag(decode, "--kv-link-gbps") == "25" and "--kv-events-endpoint" in decode


def test_prefill_and_decode_vllm_replicas_get_nixl_as_vllms_examples_start_it() -> None:
    for replica in _pd("vllm"):
        argv = render_launch(replica, "127.0.0.1", PORTS, kv_events=True).argv
        assert json.loads(flag(argv, "--kv-transfer-config")) == {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
        }


def test_a_kv_connector_the_deployment_sets_wins() -> None:
    model, deployment = load_text(
        PD_MANIFEST.replace("ENGINE", "vllm").replace(
            "replicas: 1}",
            """replicas: 1, engineArgs: {kv_transfer_config: '{"kv_connector":"P2pNcclConnector"}'}}""",
        )
    )
    assert isinstance(model, Model) and isinstance(deployment, Deployment)
    prefill = next(r for r in desired_replicas(deployment, model) if r.role == "prefill")
    assert prefill.args["kv_transfer_config"] == '{"kv_connector":"P2pNcclConnector"}'
