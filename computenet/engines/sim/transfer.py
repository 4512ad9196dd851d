"""Disaggregated prefill in the sim: vLLM's KV-connector setting and its `kv_transfer_params` protocol.

vLLM splits a request over two engines joined by a KV connector
(`--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'`):

1. a proxy sends the request to a prefill engine with `max_tokens: 1`, `stream: false` and
   `kv_transfer_params: {"do_remote_decode": true}`; that engine computes the prompt and
   answers with `kv_transfer_params` saying where the prompt's KV blocks wait:
   `{"do_remote_prefill": true, "do_remote_decode": false, "remote_engine_id",
   "remote_block_ids", "remote_request_id", "remote_host", "remote_port", "tp_size"}`;
2. the proxy sends the original request to a decode engine with those params; the decode
   engine pulls the blocks (NIXL reads them over RDMA) instead of computing the prompt,
   recomputes only its last token, and decodes.

The sim speaks the same protocol with `kv_connector` `NixlConnector`. The pull is modelled,
not done: the decode replica holds KV blocks for the prompt while the transfer takes

    transfer_s = tokens x kv_bytes_per_token_per_gpu / (kv_link_gbps x 1e9)

where `tokens` are the prompt tokens its own prefix cache does not hold, and the per-GPU
share is the KV of the heads one tensor-parallel rank holds (every rank pulls its share
over its own NIC, in parallel). The prefill replica frees its blocks when it finishes
(vLLM keeps them until the decode side has read them); they stay in its prefix cache.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from .catalog import ModelArch
from .requests import RequestError

KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")
CONNECTORS = ("NixlConnector",)
# One 400 Gb/s RDMA NIC per GPU: the usual link between a prefill and a decode node.
DEFAULT_KV_LINK_GBPS = 50.0
# vLLM's KVTransferConfig fields that change nothing in the sim; accepted so vLLM's flag value works as is.
_IGNORED_FIELDS = frozenset(
    {
        "kv_buffer_device",
        "kv_buffer_size",
        "kv_rank",
        "kv_parallel_size",
        "kv_ip",
        "kv_port",
        "kv_connector_extra_config",
        "kv_connector_module_path",
        "kv_load_failure_policy",
        "enable_permute_local_kv",
    }
)
_EXAMPLE = '\'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\''


@dataclass(frozen=True)
class KVTransferConfig:
    """`--kv-transfer-config`: which side of a disaggregated pair this replica may take."""

    kv_connector: str = "NixlConnector"
    kv_role: str = "kv_both"  # kv_producer: prefills for others; kv_consumer: decodes their prompts
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.kv_connector not in CONNECTORS:
            raise ValueError(
                f"kv_connector {self.kv_connector!r}: the sim models {', '.join(CONNECTORS)} "
                "(its kv_transfer_params protocol); use that"
            )
        if self.kv_role not in KV_ROLES:
            raise ValueError(f"kv_role {self.kv_role!r}: use one of {', '.join(KV_ROLES)}")

    @classmethod
    def parse(cls, text: str) -> KVTransferConfig:
        """vLLM's JSON value; ValueError naming the field and the fix."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc}); give e.g. {_EXAMPLE}") from None
        if not isinstance(data, dict):
            raise ValueError(f"must be a JSON object, e.g. {_EXAMPLE}")
        unknown = sorted(set(data) - {"kv_connector", "kv_role", "engine_id"} - _IGNORED_FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; the sim reads kv_connector and kv_role")
        if "kv_connector" not in data:
            raise ValueError(f"kv_connector is required, e.g. {_EXAMPLE}")
        fields = {k: data[k] for k in ("kv_connector", "kv_role", "engine_id") if data.get(k) is not None}
        for name, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        return cls(**fields)

    @property
    def produces(self) -> bool:
        return self.kv_role in ("kv_producer", "kv_both")

    @property
    def consumes(self) -> bool:
        return self.kv_role in ("kv_consumer", "kv_both")


@dataclass(frozen=True)
class RemoteDecode:
    """This replica prefills; another will decode: answer with where the KV waits."""


@dataclass(frozen=True)
class RemotePrefill:
    """The prompt was prefilled on `engine_id`: pull its KV instead of computing it."""

    engine_id: str
    block_ids: tuple[int, ...]
    host: str
    port: int

    def check_covers(self, prompt_tokens: int, block_size: int) -> None:
        """400 when the blocks cannot hold this prompt: the proxy mixed up two requests' params."""
        needed = math.ceil(prompt_tokens / block_size)
        if len(self.block_ids) < needed:
            raise RequestError(
                400,
                f"kv_transfer_params.remote_block_ids: {len(self.block_ids)} block(s) cannot hold this "
                f"prompt's {prompt_tokens} tokens ({needed} blocks of {block_size}); send the "
                "kv_transfer_params the prefill replica returned for this same prompt",
                param="kv_transfer_params.remote_block_ids",
            )


Transfer = RemoteDecode | RemotePrefill


def parse_transfer(
    params: dict[str, Any] | None, config: KVTransferConfig | None, *, stream: bool
) -> Transfer | None:
    """What a request's `kv_transfer_params` ask of this replica; a 400 naming the field when it cannot."""
    if not params:
        return None
    remote_decode, remote_prefill = _flag(params, "do_remote_decode"), _flag(params, "do_remote_prefill")
    if not remote_decode and not remote_prefill:
        return None  # e.g. a proxy's empty template: an ordinary request
    if remote_decode and remote_prefill:
        raise _bad(
            "kv_transfer_params",
            "set do_remote_decode (this replica prefills) or do_remote_prefill (it decodes), not both",
        )
    if config is None:
        raise _bad(
            "kv_transfer_params",
            f"this replica has no KV connector; start it with --kv-transfer-config {_EXAMPLE}, or send "
            "the request without kv_transfer_params",
        )
    if remote_decode:
        if not config.produces:
            raise _bad(
                "kv_transfer_params.do_remote_decode",
                "this replica is a decode replica (kv_role kv_consumer) and prefills for no one; send "
                "the prefill request to a kv_producer or kv_both replica",
            )
        if stream:
            raise _bad(
                "stream",
                "a prefill request (kv_transfer_params.do_remote_decode) must not stream: the "
                "kv_transfer_params come back in the JSON body; send stream: false",
            )
        return RemoteDecode()
    if not config.consumes:
        raise _bad(
            "kv_transfer_params.do_remote_prefill",
            "this replica is a prefill replica (kv_role kv_producer) and pulls no KV; send the decode "
            "request to a kv_consumer or kv_both replica",
        )
    return RemotePrefill(
        engine_id=_text(params, "remote_engine_id"),
        block_ids=_block_ids(params),
        host=_text(params, "remote_host"),
        port=_port(params),
    )


def kv_bytes_per_token_per_gpu(model: ModelArch, tp: int) -> float:
    """The KV of one token that one tensor-parallel rank holds (heads are replicated past kv_heads ranks)."""
    kv_heads_per_gpu = max(1.0, model.kv_heads / tp)
    return model.kv_bytes_per_token * kv_heads_per_gpu / model.kv_heads


def kv_transfer_seconds(tokens: int, model: ModelArch, tp: int, link_gbps: float) -> float:
    """How long pulling `tokens` tokens of KV takes: every rank moves its share over its own link."""
    return tokens * kv_bytes_per_token_per_gpu(model, tp) / (link_gbps * 1e9)


def _bad(param: str, message: str) -> RequestError:
    return RequestError(400, f"{param}: {message}", param=param)


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise _bad(f"kv_transfer_params.{name}", f"must be true or false, got {value!r}")


def _missing(name: str) -> RequestError:
    return _bad(
        f"kv_transfer_params.{name}",
        "is missing or empty; pass the kv_transfer_params the prefill replica returned, unchanged",
    )


def _text(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise _missing(name)
    if not isinstance(value, str):
        raise _bad(f"kv_transfer_params.{name}", f"must be a string, got {value!r}")
    return value


def _block_ids(params: dict[str, Any]) -> tuple[int, ...]:
    value = params.get("remote_block_ids")
    if value is None:
        raise _missing("remote_block_ids")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in value)
    ):
        raise _bad(
            "kv_transfer_params.remote_block_ids", "must be a non-empty list of block ids (integers >= 0)"
        )
    return tuple(value)


def _port(params: dict[str, Any]) -> int:
    value = params.get("remote_port")
    if value is None:
        raise _missing("remote_port")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise _bad("kv_transfer_params.remote_port", f"must be a port number, got {value!r}")
    return value
