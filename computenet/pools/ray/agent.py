"""The Ray agent: one process connected to one Ray cluster, answering the driver in JSON lines.

Run as ``python -m computenet.pools.ray.agent --address HOST:PORT [--namespace computenet]``. A
process can be the driver of only one Ray cluster (`ray.init` is process-wide), while one control
plane manages several Ray pools, so each `RayPool` talks to its cluster through its own agent.

Protocol, one JSON object per line: the agent first writes `{"ready": true}` once connected (or
`{"fatal": "why"}` and exits 2); then for each request `{"id": 7, "op": "nodes", "args": {}}` on
stdin it writes `{"id": 7, "ok": true, "result": ...}` or `{"id": 7, "ok": false, "kind":
"not_found" | "error", "error": "why"}`. Requests run concurrently in threads (a `stop` waits for the
engine's grace period; listing replicas must not wait behind it). The agent exits when stdin closes.

Ray and its libraries may print; the protocol keeps the original stdout to itself and sends
everything else written to file descriptor 1 to stderr, which the driver keeps as the agent's log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import ray

from . import cluster

DEFAULT_NAMESPACE = "computenet"
MAX_CONCURRENT_REQUESTS = 16
REACH_TIMEOUT_S = 5.0

Op = Callable[[Mapping[str, Any]], Any]

OPS: Mapping[str, Op] = {
    "nodes": lambda args: cluster.nodes(),
    "start": lambda args: cluster.start(args["spec"], args["pool"], bool(args.get("kv_events"))),
    "stop": lambda args: cluster.stop(args["name"]),
    "replicas": lambda args: cluster.replicas(args["pool"]),
    "logs": lambda args: cluster.logs(args["name"], args.get("tail_lines")),
}


def answer(request: Mapping[str, Any]) -> dict[str, Any]:
    """The reply to one request; any failure becomes an error reply naming it, never a dead agent."""
    request_id = request.get("id")
    op = OPS.get(str(request.get("op")))
    if op is None:
        return {"id": request_id, "ok": False, "kind": "error", "error": f"unknown op {request.get('op')!r}"}
    try:
        return {"id": request_id, "ok": True, "result": op(request.get("args") or {})}
    except KeyError as exc:
        return {
            "id": request_id,
            "ok": False,
            "kind": "not_found",
            "error": str(exc.args[0] if exc.args else exc),
        }
    except Exception as exc:  # a request boundary: report it and keep serving
        logging.getLogger(__name__).exception("request %s failed", request.get("op"))
        return {"id": request_id, "ok": False, "kind": "error", "error": f"{type(exc).__name__}: {exc}"}


class Replies:
    """The protocol's output: whole lines, one writer at a time."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: Mapping[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":"), default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def _protocol_stdout() -> IO[str]:
    """A private copy of stdout for the protocol; fd 1 itself now goes to stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def reachability_problem(address: str, timeout_s: float = REACH_TIMEOUT_S) -> str | None:
    """Why `address` cannot be reached, or None if a TCP connection to it succeeds (or it is not host:port).

    `ray.init` against an address where nothing answers retries for minutes before it gives up; a
    plain connection attempt first turns a wrong address or a cluster that is down into an error
    within seconds, naming the address.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        return f"cannot reach the Ray cluster at {address} (spec.address): {exc.strerror or exc}"
    return None


def _reply(replies: Replies, request: Mapping[str, Any]) -> None:
    replies.send(answer(request))


def serve(lines: IO[str], replies: Replies) -> None:
    with ThreadPoolExecutor(MAX_CONCURRENT_REQUESTS, thread_name_prefix="request") as pool:
        for line in lines:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                replies.send({"id": None, "ok": False, "kind": "error", "error": f"not JSON: {exc}"})
                continue
            pool.submit(_reply, replies, request)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m computenet.pools.ray.agent", description=__doc__)
    parser.add_argument(
        "--address", required=True, help="the cluster's GCS address host:port, or ray://host:port"
    )
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="Ray namespace of the replica actors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    replies = Replies(_protocol_stdout())
    unreachable = reachability_problem(args.address)
    if unreachable is not None:
        replies.send({"fatal": unreachable})
        return 2
    try:
        ray.init(
            address=args.address,
            namespace=args.namespace,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:  # the process boundary: say why in one line for the driver to show
        replies.send({"fatal": f"cannot connect to the Ray cluster at {args.address}: {exc}"})
        return 2
    replies.send({"ready": True})
    try:
        serve(sys.stdin, replies)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
