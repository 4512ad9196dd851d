"""`computenet`: a kubectl-like command line over the control API, plus `up`.

Exit codes: 0 success, 1 an operational error (server unreachable, not found),
2 invalid input (a bad manifest or flag); nothing is applied when the exit is 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from computenet import __version__
from computenet.api import PLURALS, ManifestError, kind_from_user, load_file, load_text

from . import keys, usage
from .client import API_KEY_ENV, CliError, ControlClient, find_api_key, find_server
from .output import render

DEFAULT_STATE_DIR = Path("~/.computenet")
BUNDLED_DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.yaml"


def build_parser() -> argparse.ArgumentParser:
    # Global flags are accepted before or after the command, as kubectl does.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=argparse.SUPPRESS, help="control API URL")
    common.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="default: $COMPUTENET_STATE_DIR or ~/.computenet",
    )
    parser = argparse.ArgumentParser(
        prog="computenet", description="Serve LLMs across a fleet of compute.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = functools.partial(commands.add_parser, parents=[common])

    up = add("up", help="run control plane, gateway and local pool in one process tree")
    up.add_argument(
        "-f", "--filename", type=Path, default=BUNDLED_DEMO, help="manifest to apply (default: demo)"
    )
    up.add_argument("--port", type=port_number, default=8080, help="port of the gateway and control API")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument(
        "--auth", action="store_true", help="require API keys (an admin key is made on first start)"
    )
    up.add_argument(
        "--region",
        help="the gateway's region: it prefers replicas of pools there and spills over to others when full",
    )

    apply = add("apply", help="create or update resources from a file ('-' for stdin)")
    apply.add_argument("-f", "--filename", required=True)
    apply.add_argument("--dry-run", action="store_true", help="validate on the server, change nothing")

    get = add("get", help="list resources or show one")
    get.add_argument("kind", metavar="KIND", help="models, deployments, pools, nodes, replicas, ...")
    get.add_argument("name", nargs="?", metavar="NAME")
    get.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")

    delete = add("delete", help="delete a resource")
    delete.add_argument("kind", metavar="KIND")
    delete.add_argument("name", metavar="NAME")

    logs = add("logs", help="print a replica's output")
    logs.add_argument("replica", metavar="REPLICA")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")

    add("version", help="print client and server versions")

    # Commands that need no control plane set `run` (args -> exit status) on their parser.
    from . import bench, control, gateway, sched, simulate
    from . import render as render_command

    keys.add_commands(add, common)
    usage.add_commands(add)
    gateway.add_commands(add)
    control.add_commands(add)
    bench.add_commands(add)
    simulate.add_commands(add)
    sched.add_commands(add)
    render_command.add_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    state_dir = state_dir_of(args)
    try:
        if args.command == "up":
            from .up import run_up  # starts servers: import only when needed

            where = {"state_dir": state_dir, "host": args.host, "port": args.port}
            sys.exit(run_up(args.filename, **where, auth=args.auth, region=args.region))
        if hasattr(args, "run"):
            sys.exit(args.run(args))
        client = ControlClient(
            find_server(getattr(args, "server", None), os.environ.get("COMPUTENET_SERVER"), state_dir),
            api_key=find_api_key(os.environ.get(API_KEY_ENV), state_dir),
        )
        try:
            COMMANDS[args.command](client, args)
        finally:
            client.close()
    except ManifestError as exc:
        _fail(str(exc), 2, prefix="error: ")
    except CliError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `computenet render ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(141)


def state_dir_of(args: argparse.Namespace) -> Path:
    """`--state-dir`, else $COMPUTENET_STATE_DIR, else ~/.computenet."""
    given = getattr(args, "state_dir", None)
    return (given or Path(os.environ.get("COMPUTENET_STATE_DIR", DEFAULT_STATE_DIR))).expanduser()


def _fail(message: str, code: int, prefix: str = "") -> None:
    for line in message.splitlines():
        print(prefix + line, file=sys.stderr)
    sys.exit(code)


def cmd_apply(client: ControlClient, args: argparse.Namespace) -> None:
    if args.filename == "-":
        resources = load_text(sys.stdin.read(), source="<stdin>")
    else:
        resources = load_file(args.filename)
    body = {"items": [r.to_wire() for r in resources], "source": Path(args.filename).name}
    result = client.json("POST", "/apply", json=body, params={"dryRun": "true"} if args.dry_run else None)
    for item in result["results"]:
        suffix = " (dry run)" if args.dry_run else ""
        print(f"{item['kind'].lower()}.computenet.io/{item['name']} {item['action']}{suffix}")


def cmd_get(client: ControlClient, args: argparse.Namespace) -> None:
    if args.kind.lower() in ("replica", "replicas", "rep"):
        items = client.json("GET", "/replicas")["items"]
        if args.name:
            items = [r for r in items if r["name"] == args.name]
            if not items:
                raise CliError(
                    f'error: replica "{args.name}" not found; `computenet get replicas` lists them'
                )
        print(render("Replica", items[0] if args.name and args.output != "table" else items, args.output))
        return
    if args.kind.lower() in ("node", "nodes", "no"):
        items = client.json("GET", "/nodes")["items"]
        if args.name:
            items = [n for n in items if args.name in (n["name"], f"{n['pool']}/{n['name']}")]
            if not items:
                raise CliError(f'error: node "{args.name}" not found; `computenet get nodes` lists them')
        print(render("Node", items[0] if args.name and args.output != "table" else items, args.output))
        return
    kind = _kind(args.kind)
    path = f"/{PLURALS[kind]}" + (f"/{args.name}" if args.name else "")
    data = client.json("GET", path)
    print(render(kind, data if args.name else data["items"], args.output))


def cmd_delete(client: ControlClient, args: argparse.Namespace) -> None:
    kind = _kind(args.kind)
    client.request("DELETE", f"/{PLURALS[kind]}/{args.name}")
    print(f"{kind.lower()}.computenet.io/{args.name} deleted")


def cmd_logs(client: ControlClient, args: argparse.Namespace) -> None:
    params = {"tailLines": args.tail} if args.tail else None
    sys.stdout.write(client.request("GET", f"/replicas/{args.replica}/log", params=params).text)


def cmd_version(client: ControlClient, _args: argparse.Namespace) -> None:
    print(f"Client Version: {__version__}")
    try:
        info = client.json("GET", "/version")
        print(f"Server Version: {info['version']} ({client.server})")
    except CliError:
        print(f"Server Version: <unreachable at {client.server}>")


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}")
    return int(text)


def _kind(text: str) -> str:
    try:
        return kind_from_user(text)
    except ValueError as exc:
        raise CliError(f"error: {exc}, or replicas", exit_code=2) from exc


COMMANDS = {
    "apply": cmd_apply,
    "get": cmd_get,
    "delete": cmd_delete,
    "logs": cmd_logs,
    "version": cmd_version,
    "keys": keys.cmd_keys,
    "usage": usage.cmd_usage,
}


if __name__ == "__main__":
    main()
