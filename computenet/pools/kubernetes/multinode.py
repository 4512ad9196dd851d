"""How each engine spans several nodes: the leader's and the workers' commands in a LeaderWorkerSet. Pure.

LeaderWorkerSet gives every pod of a group `LWS_LEADER_ADDRESS`, `LWS_WORKER_INDEX` and `LWS_GROUP_SIZE`,
and Kubernetes expands `$(NAME)` in a container's command from its environment, so the commands name
them instead of addresses known only at run time.

* `vllm`: a Ray cluster per replica (vLLM's own multi-node recipe): workers join the leader's Ray head;
  the leader waits until every node has joined, then serves with tensor parallelism inside a node and
  pipeline parallelism across nodes.
* `sglang`: every pod runs the server with its node rank; rank 0 (the leader) answers HTTP.
* `sim`: nothing to distribute; the workers only hold their node, as a real engine's would.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import replace

from computenet.engines.base import ArgValue, has_arg

from ..base import ReplicaSpec
from .podtemplate import engine_argv, gpus_per_pod

RAY_PORT = 6379
SGLANG_DIST_PORT = 20000

Commands = tuple[list[str], list[str]]  # the leader's, the workers'


def _vllm(spec: ReplicaSpec) -> Commands:
    parallel: dict[str, ArgValue] = {"distributed_executor_backend": "ray"}
    if not has_arg(spec.args, "tensor_parallel_size", "pipeline_parallel_size"):
        parallel |= {"tensor_parallel_size": gpus_per_pod(spec), "pipeline_parallel_size": spec.nodes}
    argv, _ = engine_argv(replace(spec, gpus=0, args={**spec.args, **parallel}))
    wait = (
        "import ray, sys; ray.init(address='auto'); "
        f"sys.exit(sum(n['Alive'] for n in ray.nodes()) < {spec.nodes})"
    )
    leader = (
        f"ray start --head --port={RAY_PORT} && "
        f"until python3 -c {shlex.quote(wait)}; do sleep 5; done && exec {shlex.join(argv)}"
    )
    worker = f"ray start --address=$(LWS_LEADER_ADDRESS):{RAY_PORT} --block"
    return ["sh", "-c", leader], ["sh", "-c", worker]


def _sglang(spec: ReplicaSpec) -> Commands:
    argv, _ = engine_argv(spec)
    argv += ["--nnodes", str(spec.nodes), "--node-rank", "$(LWS_WORKER_INDEX)"]
    argv += ["--dist-init-addr", f"$(LWS_LEADER_ADDRESS):{SGLANG_DIST_PORT}"]
    return argv, argv


def _sim(spec: ReplicaSpec) -> Commands:
    argv, _ = engine_argv(spec)
    return argv, ["sleep", "infinity"]


MULTINODE: Mapping[str, Callable[[ReplicaSpec], Commands]] = {"vllm": _vllm, "sglang": _sglang, "sim": _sim}


def multinode_commands(spec: ReplicaSpec) -> Commands:
    """The leader's and the workers' commands for a replica over `spec.nodes` nodes."""
    try:
        return MULTINODE[spec.engine](spec)
    except KeyError:
        raise ValueError(f"engine {spec.engine!r} cannot run one replica over several nodes") from None
