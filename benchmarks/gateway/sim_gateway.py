"""ComputeNet's gateway in front of `sim` replicas that publish KV events, for the routing benchmark.

    python benchmarks/gateway/sim_gateway.py --port N --model M --policy precise-prefix \\
        --worker http://127.0.0.1:8001,tcp://127.0.0.1:5557,tcp://127.0.0.1:5558 [--worker ...]

`computenet gateway --upstream URL` treats an upstream as any OpenAI-compatible server:
no engine to scrape, no KV events, so `precise-prefix` would have nothing to read; and
`-f FILE` declares Routes and Providers, not replicas. The control plane is what
publishes replicas with `engine`, `kv_events` and `kv_events_replay`. This script does
what it does: it builds the app exactly as `computenet gateway` does (`build_app`), then
publishes the workers as one deployment of `sim` Endpoints routed with `--policy`, and
serves it with the same uvicorn settings (one worker, uvloop, httptools, no access log).
Each `--worker` is `URL[,KV_EVENTS[,KV_EVENTS_REPLAY]]`. On exit it prints one line,
`kv-event stats {JSON}`: what its KV-event subscriber counted (batches, gaps, replays,
resets), which the gateway's /metrics does not carry yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys

import uvicorn

from computenet.api import Endpoint, PolicySpec
from computenet.cli.gateway import build_app
from computenet.gateway import GatewayApp

DEPLOYMENT = "sims"
STATS_PREFIX = "kv-event stats"


def endpoints(model: str, workers: list[str]) -> list[Endpoint]:
    out = []
    for i, spec in enumerate(workers):
        url, kv, replay = ([*spec.split(","), None, None])[:3]
        assert url is not None
        out.append(
            Endpoint(
                replica=f"sim-{i}",
                deployment=DEPLOYMENT,
                model=model,
                url=url,
                engine="sim",
                kv_events=kv or None,
                kv_events_replay=replay or None,
            )
        )
    return out


def report_and_exit(app: GatewayApp) -> None:
    subscriber = app.gw.feeds.kv_events
    if subscriber is not None:
        print(STATS_PREFIX, json.dumps(dataclasses.asdict(subscriber.stats)), flush=True)
    sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True, help="the name the sims serve")
    parser.add_argument("--policy", default="precise-prefix", help="a routing preset (docs/routing.md)")
    parser.add_argument("--worker", action="append", required=True, metavar="URL[,KV[,REPLAY]]")
    args = parser.parse_args()
    app = build_app({"filename": None, "model": None, "upstream": None, "access_log": False})
    policy = PolicySpec.model_validate(args.policy)
    app.gw.registry.publish_now(
        DEPLOYMENT, endpoints(args.model, args.worker), model=args.model, policy=policy
    )
    # uvicorn re-raises the SIGTERM it shut down on once it has restored this handler
    signal.signal(signal.SIGTERM, lambda *_: report_and_exit(app))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
