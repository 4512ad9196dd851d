"""What the driver, the agent and the replica actors tell each other, and how replica actors are created."""

from __future__ import annotations

import json

import pytest

from computenet.pools import ReplicaSpec
from computenet.pools.ray.wire import ActorFacts, spec_from_wire, spec_to_wire

SPEC = ReplicaSpec(
    name="web-server-0", deployment="web", role="server", engine="vllm", served_name="llm", source="org/llm",
    args={"max_num_seqs": 8, "enforce_eager": True, "lora": ["a", "b"]}, gpus=2, gpu_type="H100", cpu=4,
    memory_gb=32, template_hash="abc", node="ab" * 28, gpu_ids=(0, 1),
)  # fmt: skip


def test_a_spec_and_facts_survive_json_both_ways() -> None:
    assert spec_from_wire(json.loads(json.dumps(spec_to_wire(SPEC)))) == SPEC
    facts = ActorFacts(
        name=SPEC.name, pool="ray", spec=SPEC, node_id="n" * 56, gpu_ids=(3,), running=True, pid=7
    )
    assert ActorFacts.from_wire(json.loads(json.dumps(facts.to_wire()))) == facts


def test_fields_from_a_newer_version_are_ignored() -> None:
    assert spec_from_wire({**spec_to_wire(SPEC), "priority": "high"}) == SPEC


def test_a_replica_actor_is_detached_pinned_to_its_node_and_holds_its_gpus() -> None:
    pytest.importorskip("ray")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from computenet.pools.ray.cluster import DEFAULT_CPU, actor_options

    options = actor_options(spec_to_wire(SPEC))
    strategy = options.pop("scheduling_strategy")
    assert isinstance(strategy, NodeAffinitySchedulingStrategy)
    assert (strategy.node_id, strategy.soft) == ("ab" * 28, False)
    assert options == {
        "name": "web-server-0",
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": 0,
        "num_cpus": 4,
        "num_gpus": 2,
        "memory": 32 * 2**30,
        "accelerator_type": "H100",
    }
    unplaced = actor_options(spec_to_wire(ReplicaSpec("r", "d", "server", "sim", "llm", "sim://llm")))
    assert "scheduling_strategy" not in unplaced and "accelerator_type" not in unplaced
    assert (unplaced["num_cpus"], unplaced["num_gpus"]) == (DEFAULT_CPU, 0)


def test_the_agent_answers_an_unknown_request_and_a_missing_replica_with_errors_not_a_crash() -> None:
    pytest.importorskip("ray")
    from computenet.pools.ray.agent import answer

    assert answer({"id": 1, "op": "reboot"}) == {
        "id": 1,
        "ok": False,
        "kind": "error",
        "error": "unknown op 'reboot'",
    }
    reply = answer({"id": 2, "op": "stop", "args": {}})  # no name given
    assert reply["id"] == 2 and not reply["ok"] and reply["kind"] == "not_found"
