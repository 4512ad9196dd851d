"""Auth for `computenet up`: the bootstrap admin key, and keeping a gateway's keys current.

Auth is off unless `up --auth` asks for it, so the local demo needs no key. With it
on, the first start mints an admin key, keeps only its hash in the store and writes
the text to `<state dir>/admin.key` (mode 0600), where the local CLI finds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from computenet.api import ApiKey
from computenet.store import ResourceStore

from .client import ADMIN_KEY_FILE, API_KEY_ENV

log = logging.getLogger(__name__)

ADMIN_TENANT = "admin"
RETRY_S = 1.0  # after a failed read of the keys, before the next try


async def ensure_admin_key(store: ResourceStore, state_dir: Path) -> str | None:
    """Mint an admin key when the store has no active one; returns its text (print it once) or None."""
    if any(key.admin for key in await store.keys.list_active()):
        return None
    key, text = await store.keys.create(ADMIN_TENANT, admin=True)
    try:
        write_secret(state_dir / ADMIN_KEY_FILE, text)
    except OSError:
        await store.keys.revoke(key.key_id)  # nobody could ever use it
        raise
    return text


def write_secret(path: Path, text: str) -> None:
    """Write `text` readable by its owner only, replacing `path` whole (never half written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # the file may have existed with other modes
        out.write(text + "\n")
    os.replace(tmp, path)


async def follow_keys(store: ResourceStore, apply: Callable[[list[ApiKey]], None]) -> None:
    """Until cancelled: hand `apply` the active keys now and again after every key change.

    `apply` replaces the gateway's whole key table. A key that expires later is in the
    list until then, so the gateway checks `expires_at` on each request.
    """
    changed = store.keys.watch()
    while True:
        changed.clear()  # before reading, so a change during the read wakes us again
        try:
            apply(await store.keys.list_active())
        except Exception:
            log.exception("reading API keys failed; retrying in %.1fs", RETRY_S)
            await asyncio.sleep(RETRY_S)
            continue
        await changed.wait()


def auth_banner(auth_required: bool, admin_key: str | None, state_dir: Path) -> str:
    """What `up` prints about auth: whether it is on, and a new admin key the one time it exists."""
    if not auth_required:
        return "auth: off (no API key needed; `computenet up --auth` requires keys)"
    key_file = state_dir / ADMIN_KEY_FILE
    if admin_key is None:
        return f"auth: on (the CLI sends ${API_KEY_ENV}, else the key in {key_file})"
    return f"auth: on. New admin key, shown only this once (the CLI reads it from {key_file}):\n  {admin_key}"
