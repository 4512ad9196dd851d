"""The gateways under test: how to install, start, and name each one.

    python benchmarks/gateway/peers.py [--cache-dir DIR] [NAME ...]   # install the peers now

Every peer lives in its own virtual environment under `<cache-dir>/peers/<name>`, made
on first use with `python -m venv` and `pip install <pinned spec>`, so none of their
dependencies touch ComputeNet's. A target is a registry entry: what to pip install, the
command line for a given port and upstream, the bearer token a client must send.

* LiteLLM's proxy 1.104.0 (newer releases need a `certifi` the package index here lacks),
  with a config file: one `openai/` model at the fake upstream, and a `master_key`,
  which this version requires. `LITELLM_LOCAL_MODEL_COST_MAP=True` stops it fetching the
  model price list from GitHub at start (with no internet it retries for ~10 s); every
  other setting is LiteLLM's default (one uvicorn worker, its access log on).
* sglang-router 0.3.2 and vllm-router 0.1.17 (PyPI's, the Rust vLLM router): the upstream as
  their single worker, defaults otherwise (cache-aware policy, retries, circuit breaker,
  health checks); only their Prometheus listener is moved to 127.0.0.1 and a free port.
* vllm-router-rr: the same vllm-router with `--policy round_robin`. Its default
  cache-aware policy first asks the worker to render and tokenize every prompt
  (`POST /v1/chat/completions/render`, `/tokenize`, which the fake upstream answers with
  404, as a vLLM without them would), so two extra round trips per request; this row is
  its plain proxy path.

`ROUTERS` (for `benchmarks/routing_realtime.py`) starts the same installs in front of
several workers with a routing policy chosen: each is a `FleetRouter`, whose `launch`
gets every worker's URL and, where the worker publishes them, its KV-event sockets.
ComputeNet's entry runs `computenet gateway --upstream ... --engine sim --kv-events ...`.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path.home() / ".cache" / "computenet-bench"
MODEL = "bench-model"
LITELLM_KEY = "sk-bench-0123456789"


@dataclass(frozen=True)
class Launch:
    """One started gateway: its argv, extra environment, and the key clients send."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None


@dataclass(frozen=True)
class Peer:
    name: str
    pip_specs: tuple[str, ...]  # what the venv holds; empty: ComputeNet's own .venv
    dist: str  # the distribution whose version is reported
    # (venv, port, upstream URL, work directory, the benchmark's arguments) -> what to run
    launch: Callable[[Path, int, str, Path, argparse.Namespace], Launch]
    ready_timeout_s: float = 60.0
    venv_name: str = ""  # set when it shares another target's venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_computenet(
    venv: Path, port: int, upstream: str, workdir: Path, args: argparse.Namespace
) -> Launch:
    argv = [str(venv / "bin" / "computenet"), "gateway", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--model", MODEL, "--upstream", upstream, "--state-dir", str(workdir / "computenet-state")]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return Launch(argv)


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: sk-upstream-unused
general_settings:
  master_key: {key}
"""


def launch_litellm(venv: Path, port: int, upstream: str, workdir: Path, args: argparse.Namespace) -> Launch:
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(model=MODEL, upstream=upstream, key=LITELLM_KEY))
    argv = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    return Launch([*argv, "--port", str(port)], {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, LITELLM_KEY)


def router_argv(port: int, urls: Sequence[str], policy: str | None = None) -> list[str]:
    """What sglang-router and vllm-router share: the workers, a policy or theirs, all on 127.0.0.1."""
    metrics = ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    chosen = ["--policy", policy] if policy else []
    return ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls, *chosen, *metrics]


def launch_sglang(venv: Path, port: int, upstream: str, workdir: Path, args: argparse.Namespace) -> Launch:
    return Launch([str(venv / "bin" / "sglang-router"), "launch", *router_argv(port, [upstream])])


def launch_vllm(venv: Path, port: int, upstream: str, workdir: Path, args: argparse.Namespace) -> Launch:
    return Launch([str(venv / "bin" / "vllm-router"), *router_argv(port, [upstream])])


def launch_vllm_rr(venv: Path, port: int, upstream: str, workdir: Path, args: argparse.Namespace) -> Launch:
    """vllm-router's default cache-aware policy asks the worker to render and tokenize every prompt."""
    return Launch(
        [str(venv / "bin" / "vllm-router"), *router_argv(port, [upstream]), "--policy", "round_robin"]
    )


PEERS = {
    peer.name: peer
    for peer in (
        Peer("computenet", (), "computenet", launch_computenet),
        Peer("litellm", ("litellm[proxy]==1.104.0",), "litellm", launch_litellm, ready_timeout_s=180),
        Peer("sglang-router", ("sglang-router==0.3.2",), "sglang-router", launch_sglang),
        Peer("vllm-router", ("vllm-router==0.1.17",), "vllm-router", launch_vllm),
        Peer(
            "vllm-router-rr",
            ("vllm-router==0.1.17",),
            "vllm-router",
            launch_vllm_rr,
            venv_name="vllm-router",
        ),
    )
}


@dataclass(frozen=True)
class Worker:
    """One engine replica behind a router: its base URL and, if it publishes them, its KV-event sockets."""

    url: str
    kv_events: str | None = None  # tcp://host:port of the ZMQ PUB socket
    kv_events_replay: str | None = None  # its replay (ROUTER) socket


@dataclass(frozen=True)
class FleetRouter:
    """A router with a policy in front of several workers; `peer` names the install it runs from."""

    name: str
    peer: str  # a key of PEERS: whose venv and version
    policy: str  # the router's own name for it
    # (venv, port, model, workers, work directory) -> what to run
    launch: Callable[[Path, int, str, Sequence[Worker], Path], Launch]


def fleet_computenet(policy: str) -> Callable[[Path, int, str, Sequence[Worker], Path], Launch]:
    def launch(venv: Path, port: int, model: str, workers: Sequence[Worker], workdir: Path) -> Launch:
        argv = [str(venv / "bin" / "computenet"), "gateway", "--port", str(port), "--model", model]
        argv += ["--upstream", ",".join(w.url for w in workers), "--engine", "sim", "--policy", policy]
        if all(w.kv_events for w in workers):
            argv += ["--kv-events", ",".join(str(w.kv_events) for w in workers)]
        if all(w.kv_events_replay for w in workers):
            argv += ["--kv-events-replay", ",".join(str(w.kv_events_replay) for w in workers)]
        return Launch([*argv, "--no-access-log"])

    return launch


def fleet_sglang(policy: str) -> Callable[[Path, int, str, Sequence[Worker], Path], Launch]:
    def launch(venv: Path, port: int, model: str, workers: Sequence[Worker], workdir: Path) -> Launch:
        urls = [w.url for w in workers]
        return Launch([str(venv / "bin" / "sglang-router"), "launch", *router_argv(port, urls, policy)])

    return launch


def fleet_vllm(policy: str) -> Callable[[Path, int, str, Sequence[Worker], Path], Launch]:
    def launch(venv: Path, port: int, model: str, workers: Sequence[Worker], workdir: Path) -> Launch:
        argv = [str(venv / "bin" / "vllm-router"), *router_argv(port, [w.url for w in workers], policy)]
        if policy == "kv_aware":  # its precise policy: the workers' KV events, vLLM's 16-token blocks
            for w in workers:
                if w.kv_events:
                    argv += ["--kv-event-source", f"{w.url}={w.kv_events}"]
                if w.kv_events_replay:
                    argv += ["--kv-event-replay-source", f"{w.url}={w.kv_events_replay}"]
            argv += ["--kv-event-model", model, "--kv-event-block-size", "16"]
        return Launch(argv)

    return launch


ROUTERS = {
    router.name: router
    for router in (
        FleetRouter(
            "computenet/precise-prefix", "computenet", "precise-prefix", fleet_computenet("precise-prefix")
        ),
        FleetRouter("computenet/prefix", "computenet", "prefix", fleet_computenet("prefix")),
        FleetRouter("computenet/round-robin", "computenet", "round-robin", fleet_computenet("round-robin")),
        FleetRouter("sglang-router/cache_aware", "sglang-router", "cache_aware", fleet_sglang("cache_aware")),
        FleetRouter("vllm-router/cache_aware", "vllm-router", "cache_aware", fleet_vllm("cache_aware")),
        FleetRouter("vllm-router/round_robin", "vllm-router", "round_robin", fleet_vllm("round_robin")),
        FleetRouter("vllm-router/kv_aware", "vllm-router", "kv_aware", fleet_vllm("kv_aware")),
    )
}


def venv_of(peer: Peer, cache_dir: Path) -> Path:
    return ROOT / ".venv" if not peer.pip_specs else cache_dir / "peers" / (peer.venv_name or peer.name)


def ensure_installed(peer: Peer, cache_dir: Path) -> Path:
    """The peer's venv, made and filled on first use; a marker file records what it holds."""
    venv = venv_of(peer, cache_dir)
    if not peer.pip_specs:
        return venv
    marker = venv / "bench-installed.txt"
    wanted = "\n".join(peer.pip_specs)
    if marker.exists() and marker.read_text() == wanted:
        return venv
    print(f"installing {peer.name} into {venv} ({' '.join(peer.pip_specs)}) ...", file=sys.stderr, flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *peer.pip_specs]
    subprocess.run(pip, check=True, stdout=subprocess.DEVNULL)
    marker.write_text(wanted)
    return venv


def version(peer: Peer, venv: Path) -> str:
    code = f"import importlib.metadata as m; print(m.version({peer.dist!r}))"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    found = done.stdout.strip() or "unknown"
    if peer.name == "computenet":
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        found += f" ({sha.stdout.strip()}+worktree)" if sha.returncode == 0 else ""
    return found


def missing_command(peer: Peer, launch: Launch) -> str | None:
    """Why the peer cannot start, checked before starting it, or None."""
    if not Path(launch.argv[0]).exists():
        return f"{launch.argv[0]} does not exist"
    if peer.name == "computenet":
        done = subprocess.run([launch.argv[0], "gateway", "--help"], capture_output=True, text=True)
        if done.returncode != 0:
            return (
                "this checkout's `computenet` has no `gateway` command yet: "
                + (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description="Install the peer gateways into their own venvs.")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "names", nargs="*", default=[name for name, p in PEERS.items() if p.pip_specs and not p.venv_name]
    )
    args = parser.parse_args()
    for name in args.names:
        peer = PEERS[name]
        venv = ensure_installed(peer, args.cache_dir)
        print(f"{name} {version(peer, venv)} in {venv}")


if __name__ == "__main__":
    main()
