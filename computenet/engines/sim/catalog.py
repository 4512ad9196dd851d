"""The GPUs and model architectures the sim's performance model knows, by id.

The built-in entries live in `catalog.yaml` beside this module so they read as
data, not code; `load_catalog(extra)` layers user files over them, so a new
GPU or model is a YAML entry, never a code change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

BUILTIN_CATALOG = Path(__file__).with_name("catalog.yaml")
GIB = 1024**3
_T = TypeVar("_T")


class _Entry(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    id: str = Field(min_length=1)


class GpuSpec(_Entry):
    """One GPU type as the roofline sees it."""

    name: str = ""
    memory_gib: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)  # peak dense tensor throughput, 1e12 FLOP/s
    memory_t_bps: float = Field(gt=0, alias="memoryTBps")  # HBM/GDDR bandwidth, 1e12 bytes/s
    interconnect_g_bps: float = Field(gt=0, alias="interconnectGBps")  # GPU-GPU, 1e9 bytes/s one way

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB


class ModelArch(_Entry):
    """A transformer's shape: all the performance model needs to cost a step."""

    parameters_b: float = Field(gt=0, alias="parametersB")  # every weight, embeddings included
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab: int = Field(gt=0)
    max_context: int = Field(gt=0)
    dtype_bytes: int = Field(default=2, gt=0)  # bf16 weights and KV cache
    experts: int = Field(default=0, ge=0)  # 0 for a dense model
    experts_per_token: int = Field(default=0, ge=0)
    expert_parameters_b: float = Field(default=0.0, ge=0, alias="expertParametersB")

    @model_validator(mode="after")
    def _moe_is_complete(self) -> ModelArch:
        moe = (self.experts, self.experts_per_token, self.expert_parameters_b)
        if any(moe) and not all(moe):
            raise ValueError("a MoE model needs experts, expertsPerToken and expertParametersB together")
        if self.experts_per_token > self.experts:
            raise ValueError(f"expertsPerToken ({self.experts_per_token}) exceeds experts ({self.experts})")
        if self.expert_parameters_b >= self.parameters_b:
            raise ValueError("expertParametersB must be less than parametersB")
        return self

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token: 2 x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.parameters_b * 1e9 * self.dtype_bytes

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden


class Catalog(BaseModel):
    """GPUs and models by id; later files override earlier entries with the same id."""

    model_config = ConfigDict(frozen=True)

    gpus: Mapping[str, GpuSpec]
    models: Mapping[str, ModelArch]

    def gpu(self, gpu_id: str) -> GpuSpec:
        return _lookup(self.gpus, gpu_id, "GPU")

    def model(self, model_id: str) -> ModelArch:
        return _lookup(self.models, model_id, "model architecture")


class CatalogError(ValueError):
    """A catalogue file that cannot be used; the message names the file and the entry."""


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpus: list[GpuSpec] = []
    models: list[ModelArch] = []


def load_catalog(extra: Iterable[Path] = ()) -> Catalog:
    """The built-in catalogue with `extra` files layered over it, in order."""
    gpus: dict[str, GpuSpec] = {}
    models: dict[str, ModelArch] = {}
    for path in (BUILTIN_CATALOG, *extra):
        parsed = _read(path)
        gpus |= {gpu.id: gpu for gpu in parsed.gpus}
        models |= {model.id: model for model in parsed.models}
    return Catalog(gpus=MappingProxyType(gpus), models=MappingProxyType(models))


def _read(path: Path) -> _CatalogFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalogue: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return _CatalogFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise CatalogError(f"{path}: " + "; ".join(problems)) from exc


def _lookup(entries: Mapping[str, _T], key: str, what: str) -> _T:
    try:
        return entries[key]
    except KeyError:
        known = ", ".join(sorted(entries))
        raise CatalogError(f"unknown {what} {key!r}; known: {known} (add one with --catalog FILE)") from None
