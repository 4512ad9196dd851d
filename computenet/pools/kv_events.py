"""Turning on a replica's KV-cache events when a pool starts it, so the gateway routes on real events.

Precise prefix routing subscribes to every replica that publishes vLLM-format KV events
(a ZMQ PUB socket, and a ROUTER socket to replay missed batches). Each engine is told
to publish in its own words, so this is a registry by engine name:

* `sim`: `--kv-events-endpoint tcp://HOST:P1 --kv-events-replay-endpoint tcp://HOST:P2`;
* `vllm`: `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
  "endpoint": "tcp://*:P1", "replay_endpoint": "tcp://HOST:P2", "topic": "kv-events"}'`
  and `PYTHONHASHSEED=0`, so its block hashes are the same in every process and after a
  restart. vLLM binds its PUB socket only for a wildcard address (it connects
  otherwise), so that one listens on every interface; the replay socket always binds.

The ports are picked free by the pool for every start of the process. Where the
replica's engine args already configure KV events, they are kept as given and only
read back, so the gateway subscribes where the engine really publishes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from computenet.engines.base import ArgValue, arg_value

VLLM_TOPIC = "kv-events"


@dataclass(frozen=True)
class KVEventsWiring:
    """What to add to a replica's launch, and where the gateway subscribes to its events."""

    endpoint: str
    replay_endpoint: str | None
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


Wire = Callable[[Mapping[str, ArgValue], str, int, int], KVEventsWiring | None]


def _sim(args: Mapping[str, ArgValue], host: str, port: int, replay_port: int) -> KVEventsWiring | None:
    given = arg_value(args, "kv_events_endpoint")
    if isinstance(given, str):
        replay = arg_value(args, "kv_events_replay_endpoint")
        return KVEventsWiring(given, replay if isinstance(replay, str) else None)
    endpoint, replay = f"tcp://{host}:{port}", f"tcp://{host}:{replay_port}"
    wired = {"kv_events_endpoint": endpoint, "kv_events_replay_endpoint": replay}
    return KVEventsWiring(endpoint, replay, args=wired)


def _vllm(args: Mapping[str, ArgValue], host: str, port: int, replay_port: int) -> KVEventsWiring | None:
    env = {"PYTHONHASHSEED": "0"}
    given = arg_value(args, "kv_events_config")
    if given is not None:
        return _vllm_given(given, host, env)
    replay = f"tcp://{host}:{replay_port}"
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{port}",
        "replay_endpoint": replay,
        "topic": VLLM_TOPIC,
    }
    wired = {"kv_events_config": json.dumps(config, separators=(",", ":"))}
    return KVEventsWiring(f"tcp://{host}:{port}", replay, args=wired, env=env)


def _vllm_given(given: ArgValue, host: str, env: Mapping[str, str]) -> KVEventsWiring | None:
    """The user's own `kv_events_config`: subscribe where it says (a wildcard host is this host)."""
    try:
        config = json.loads(given) if isinstance(given, str) else None
    except json.JSONDecodeError:
        return None  # vLLM will refuse it at startup, and its log says why
    if not isinstance(config, dict) or not config.get("enable_kv_cache_events"):
        return None
    endpoint, replay = config.get("endpoint"), config.get("replay_endpoint")
    if not isinstance(endpoint, str):
        return None
    local = endpoint.replace("*", host)
    return KVEventsWiring(local, replay.replace("*", host) if isinstance(replay, str) else None, env=env)


WIRINGS: Mapping[str, Wire] = {"sim": _sim, "vllm": _vllm}


def kv_events_wiring(
    engine: str, args: Mapping[str, ArgValue], host: str, port: int, replay_port: int
) -> KVEventsWiring | None:
    """How a replica of `engine` publishes KV events on `port` (replays on `replay_port`); None when it
    cannot (an engine whose events the gateway does not read)."""
    wire = WIRINGS.get(engine)
    return wire(args, host, port, replay_port) if wire is not None else None
