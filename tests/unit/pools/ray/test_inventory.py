"""A Ray cluster's node table turned into the scheduler's nodes: pure, from entries as `ray.nodes()` gives them."""

from __future__ import annotations

from typing import Any

from computenet.pools.ray.inventory import GPU_MEMORY_LABEL, node_info

KNOWN = {"H100": 79.6, "A10G": 22.5}
NODE_ID = "a" * 56


def raw(
    resources: dict[str, float], *, alive: bool = True, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "NodeID": NODE_ID,
        "Alive": alive,
        "NodeManagerAddress": "10.0.0.7",
        "NodeName": "10.0.0.7",
        "Resources": resources,
        "Labels": {"ray.io/node-id": NODE_ID, **(labels or {})},
    }


def test_a_gpu_node_reports_its_count_model_memory_and_address() -> None:
    node = node_info(raw({"CPU": 16, "GPU": 8, "memory": 64 * 2**30, "accelerator_type:H100": 1}), KNOWN)
    assert (node.name, node.ready, node.address) == (NODE_ID, True, "10.0.0.7")
    assert (node.cpu, node.memory_gb, node.gpus, node.gpu_type, node.gpu_memory_gb) == (
        16,
        64,
        8,
        "H100",
        79.6,
    )
    assert node.labels == {"ray.io/node-id": NODE_ID}


def test_a_dead_node_is_reported_not_ready() -> None:
    assert not node_info(raw({"CPU": 4}, alive=False), KNOWN).ready


def test_a_node_without_gpus_has_no_gpu_model_even_if_one_is_declared() -> None:
    node = node_info(raw({"CPU": 4, "accelerator_type:A10G": 1}), KNOWN)
    assert (node.gpus, node.gpu_type, node.gpu_memory_gb) == (0, "", 0.0)


def test_gpu_memory_comes_from_a_node_label_when_the_model_is_unknown_or_the_label_says_so() -> None:
    unknown = node_info(raw({"GPU": 2, "accelerator_type:B300": 1}), KNOWN)
    assert (unknown.gpu_type, unknown.gpu_memory_gb) == ("B300", 0.0)
    labelled = node_info(raw({"GPU": 2, "accelerator_type:B300": 1}, labels={GPU_MEMORY_LABEL: "268"}), KNOWN)
    assert labelled.gpu_memory_gb == 268
    garbled = node_info(raw({"GPU": 2, "accelerator_type:H100": 1}, labels={GPU_MEMORY_LABEL: "lots"}), KNOWN)
    assert garbled.gpu_memory_gb == 79.6


def test_two_declared_models_give_the_same_answer_whatever_their_order() -> None:
    one = node_info(raw({"GPU": 2, "accelerator_type:L4": 1, "accelerator_type:A10G": 1}), KNOWN)
    other = node_info(raw({"GPU": 2, "accelerator_type:A10G": 1, "accelerator_type:L4": 1}), KNOWN)
    assert one.gpu_type == other.gpu_type == "A10G"
