"""Engine args a replica gets from its role: a prefill or decode replica is told which side it takes.

The gateway runs a disaggregated request in vLLM's protocol (`kv_transfer_params`, see
`computenet.gateway.disagg`), so each engine that speaks it is started with its KV
connector; a registry by engine name, as the args are spelled differently:

* `vllm`: `--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'`,
  the same on both sides as vLLM's own examples start it (the request says which side);
* `sim`: vLLM's flag with the side spelled out (`kv_producer` for prefill,
  `kv_consumer` for decode), so a request sent to the wrong side gets a clear 400.

An engine missing here (SGLang, whose PD protocol differs) gets nothing: its prefill and
decode replicas need a `router` role of the engine's own. Args the deployment sets win.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from computenet.engines.base import ArgValue, has_arg

PAIRED_ROLES = frozenset({"prefill", "decode"})


def _connector(kv_role: str) -> dict[str, ArgValue]:
    config = {"kv_connector": "NixlConnector", "kv_role": kv_role}
    return {"kv_transfer_config": json.dumps(config, separators=(",", ":"))}


ROLE_ARGS: Mapping[str, Callable[[str], dict[str, ArgValue]]] = {
    "vllm": lambda role: _connector("kv_both"),
    "sim": lambda role: _connector("kv_producer" if role == "prefill" else "kv_consumer"),
}


def role_args(engine: str, role: str, args: Mapping[str, ArgValue]) -> dict[str, ArgValue]:
    """Args to add for `role` on `engine`, unless `args` already configure a KV connector."""
    render = ROLE_ARGS.get(engine)
    if role not in PAIRED_ROLES or render is None or has_arg(args, "kv_transfer_config"):
        return {}
    return render(role)
