"""The `Model` kind: something servable, and the facts about it that placement needs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .meta import CamelModel, Condition, Resource

EngineName = Literal["vllm", "sglang", "sim"]


class Architecture(CamelModel):
    """Shape facts used to estimate memory (weights + KV cache) before anything starts."""

    parameters_b: float | None = Field(default=None, gt=0, description="billions of parameters")
    layers: int | None = Field(default=None, gt=0)
    heads: int | None = Field(default=None, gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    dtype: Literal["float32", "bfloat16", "float16", "fp8", "int8", "int4"] = "bfloat16"
    max_context: int | None = Field(default=None, gt=0)


class RuntimeSupport(CamelModel):
    engine: EngineName
    version: str | None = Field(default=None, description="a version range such as '>=0.6,<0.8'")
    args: dict[str, str | int | float | bool] = Field(default_factory=dict)


class ModelSpec(CamelModel):
    source: str = Field(min_length=1, description="a path, hf://org/name or modelscope://org/name")
    architecture: Architecture | None = None
    runtimes: list[RuntimeSupport] = Field(default_factory=list)


class ModelStatus(CamelModel):
    conditions: list[Condition] = Field(default_factory=list)


class Model(Resource):
    kind: Literal["Model"] = "Model"
    spec: ModelSpec
    status: ModelStatus | None = None
