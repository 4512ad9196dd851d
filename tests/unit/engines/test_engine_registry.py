"""The engine registry: lookup by runtime name, read-only, helpful on a typo."""

from __future__ import annotations

import pytest

from computenet.engines import ENGINES, args_to_flags, get_engine
from computenet.engines.base import ArgValue, has_arg
from computenet.engines.sglang import SglangAdapter
from computenet.engines.sim import SimAdapter
from computenet.engines.vllm import VllmAdapter


def test_registry_maps_names_to_adapters() -> None:
    assert sorted(ENGINES) == ["sglang", "sim", "vllm"]
    assert isinstance(get_engine("vllm"), VllmAdapter)
    assert isinstance(get_engine("sglang"), SglangAdapter)
    assert isinstance(get_engine("sim"), SimAdapter)
    assert all(adapter.name == name for name, adapter in ENGINES.items())


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        ENGINES["other"] = SimAdapter()  # type: ignore[index]


def test_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown engine 'vlm'; known engines: sglang, sim, vllm"):
        get_engine("vlm")


def test_args_to_flags_and_has_arg() -> None:
    args: dict[str, ArgValue] = {
        "max_num_seqs": 8,
        "enforce-eager": True,
        "trust_remote_code": False,
        "lora": ["a", "b"],
    }
    assert args_to_flags(args) == ["--max-num-seqs", "8", "--enforce-eager", "--lora", "a", "b"]
    assert has_arg(args, "enforce_eager")
    assert has_arg(args, "max-num-seqs")
    assert not has_arg(args, "tensor_parallel_size")
