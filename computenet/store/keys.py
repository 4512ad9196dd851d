"""Persistence of API keys: create, list, get, revoke, and a wake-up on every change.

The store mints the key itself so that the key text never leaves `create` except in
its return value: only `hash_key(text)` is written. A running gateway holds the
active keys in memory; `watch()` tells it when to reload them (a new key, a
revocation), so it never reads the database on the request path.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from computenet.api import ApiKey, KeyLimits, hash_key, mint_key

from .changes import Watchers, bump
from .errors import NotFound
from .tables import ApiKeyRow

KIND = "ApiKey"  # what NotFound names
TOPIC = "keys"


class KeyStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.watchers = Watchers()

    def watch(self) -> asyncio.Event:
        """An event set after every key change (create, revoke); clear it after waking up."""
        return self.watchers.watch()

    async def create(
        self,
        tenant: str,
        *,
        models: Sequence[str] = (),
        expires_at: float | None = None,
        admin: bool = False,
        limits: KeyLimits | None = None,
    ) -> tuple[ApiKey, str]:
        """Mint and store a key; returns its record and the key text, which nothing keeps."""
        key_id, text = mint_key()
        row = ApiKeyRow(
            key_id=key_id,
            tenant=tenant,
            secret_sha256=hash_key(text),
            models=list(models),
            expires_at=expires_at,
            admin=admin,
            revoked=False,
            created_at=time.time(),
            limits=asdict(limits or KeyLimits()),
        )
        async with self._sessions.begin() as session:
            session.add(row)
            await bump(session, TOPIC)
        self.watchers.notify()
        return _to_key(row), text

    async def get(self, key_id: str) -> ApiKey:
        async with self._sessions() as session:
            return _to_key(await _row(session, key_id))

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke for good (a revoked key is kept, so usage records still name it). Idempotent."""
        async with self._sessions.begin() as session:
            row = await _row(session, key_id)
            changed = not row.revoked
            row.revoked = True
            if changed:
                await bump(session, TOPIC)
        if changed:
            self.watchers.notify()
        return _to_key(row)

    async def list_active(self, now: float | None = None) -> builtins.list[ApiKey]:
        """Keys neither revoked nor expired at `now`. Still check `expires_at` when using one later."""
        at = time.time() if now is None else now
        return [k for k in await self._select(revoked=False) if k.expires_at is None or k.expires_at > at]

    async def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked and expired ones included, oldest first."""
        return await self._select()

    async def _select(self, **where: Any) -> builtins.list[ApiKey]:
        query = select(ApiKeyRow).filter_by(**where).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        async with self._sessions() as session:
            return [_to_key(row) for row in await session.scalars(query)]


async def _row(session: AsyncSession, key_id: str) -> ApiKeyRow:
    row = await session.get(ApiKeyRow, key_id)
    if row is None:
        raise NotFound(KIND, key_id)
    return row


def _to_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        tenant=row.tenant,
        secret_sha256=row.secret_sha256,
        models=tuple(row.models),
        expires_at=row.expires_at,
        admin=row.admin,
        revoked=row.revoked,
        created_at=row.created_at,
        limits=KeyLimits(**row.limits),
    )
