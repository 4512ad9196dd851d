"""`computenet keys create|list|revoke`: API keys for the gateway and the control API.

`create` prints the key text alone on stdout (so `KEY=$(computenet keys create ...)`
works) and, on stderr, that it is not shown again: the server keeps only its hash.
Flags are checked before anything is sent; a bad one exits 2 naming it.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from .client import CliError, ControlClient
from .output import COLUMNS, Row, age, render
from .traceargs import BadInput, parse_number
from .usage import when


def _status(row: Row) -> str:
    return "revoked" if row["revoked"] else "expired" if row["expired"] else "active"


COLUMNS["ApiKey"] = [
    ("ID", lambda r: r["keyId"]),
    ("TENANT", lambda r: r["tenant"]),
    ("MODELS", lambda r: ",".join(r["models"]) or "<all>"),
    ("SCOPE", lambda r: "admin" if r["admin"] else "data-plane"),
    ("STATUS", _status),
    ("EXPIRES", lambda r: r["expiresAt"] or "never"),
    ("AGE", lambda r: age(r["createdAt"])),
]


def add_commands(add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Register `keys` and its subcommands; `common` holds the global flags they also accept."""
    keys = add("keys", help="create, list and revoke API keys")
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    sub = functools.partial(commands.add_parser, parents=[common])
    _add_create(sub("create", help="create a key and print it (once)"))
    listing = sub("list", help="list keys (never their secrets)")
    listing.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    listing.set_defaults(keys_call=cmd_list)
    revoke = sub("revoke", help="revoke a key for good")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(keys_call=cmd_revoke)


def _add_create(create: argparse.ArgumentParser) -> None:
    create.add_argument("--tenant", required=True, help="who is billed and limited for this key's requests")
    create.add_argument("--models", metavar="A,B", help="public model names this key may call (default: all)")
    create.add_argument(
        "--expires", metavar="WHEN", help="30d, 12h, 2027-01-01 or an ISO time (default: never)"
    )
    create.add_argument("--admin", action="store_true", help="may also call the control API")
    create.add_argument("--rpm", metavar="N", help="requests per minute")
    create.add_argument("--tpm", metavar="N", help="tokens per minute")
    create.add_argument("--budget-usd", metavar="X", help="spend cap in USD per --budget-period")
    create.add_argument("--budget-period", choices=["day", "month", "total"], default="month")
    create.set_defaults(keys_call=cmd_create)


def cmd_keys(client: ControlClient, args: argparse.Namespace) -> None:
    args.keys_call(client, args)


def cmd_create(client: ControlClient, args: argparse.Namespace) -> None:
    created = client.json("POST", "/keys", json=create_body(args, now=time.time()))
    print(created["key"], flush=True)
    print(
        f"apikey/{created['keyId']} created for tenant {created['tenant']}; "
        "the key above is not shown again: store it now",
        file=sys.stderr,
    )


def create_body(args: argparse.Namespace, *, now: float) -> dict[str, Any]:
    """The `POST /keys` body from the flags; CliError (exit 2) naming the first bad flag."""
    body: dict[str, Any] = {"tenant": args.tenant, "admin": args.admin}
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise CliError(f"error: --models must name at least one model, got {args.models!r}", 2)
        body["models"] = models
    if args.expires is not None:
        expires_at = when("--expires", args.expires, now=now, future=True)
        if expires_at <= now:
            raise CliError(f"error: --expires must be in the future, got {args.expires!r}", 2)
        body["expiresAt"] = expires_at
    limits: dict[str, Any] = {"budgetPeriod": args.budget_period}
    try:
        for flag, name, cast in _LIMIT_FLAGS:
            text = getattr(args, flag.removeprefix("--").replace("-", "_"))
            if text is not None:
                limits[name] = parse_number(flag, text, cast)
    except BadInput as exc:
        raise CliError(f"error: {exc}", 2) from None
    body["limits"] = limits
    return body


_LIMIT_FLAGS: list[tuple[str, str, Callable[[str], Any]]] = [
    ("--rpm", "requestsPerMinute", int),
    ("--tpm", "tokensPerMinute", int),
    ("--budget-usd", "budgetUsd", float),
]


def cmd_list(client: ControlClient, args: argparse.Namespace) -> None:
    print(render("ApiKey", client.json("GET", "/keys")["items"], args.output))


def cmd_revoke(client: ControlClient, args: argparse.Namespace) -> None:
    client.json("DELETE", f"/keys/{args.key_id}")
    print(f"apikey/{args.key_id} revoked")
