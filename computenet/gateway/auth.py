"""Who is calling: the data plane's view of API keys.

The book is replaced whole when keys change (a store watch in `computenet up`, the
file in `computenet gateway -f`), so a lookup is a dictionary access plus one SHA-256
and one constant-time comparison. With no keys at all, auth is off: anyone on the
network may call, which is the embedded default for local use.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from computenet.api import ApiKey, hash_key, key_id_of


@dataclass(frozen=True, slots=True)
class AuthFailure:
    status: int  # 401 or 403
    code: str
    message: str


class KeyBook:
    def __init__(self, keys: Iterable[ApiKey] = (), *, required: bool = False) -> None:
        self.required = required
        self._by_id: dict[str, ApiKey] = {}
        self._by_hash: dict[str, ApiKey] = {}
        self._minted: list[ApiKey] = []
        self._declared: list[ApiKey] = []
        self.replace(keys)

    def replace(self, keys: Iterable[ApiKey]) -> None:
        """Set the minted keys (`computenet keys create`), keeping the declared ones."""
        self._minted = list(keys)
        self._rebuild()

    def declare(self, keys: Iterable[ApiKey]) -> None:
        """Set the keys declared by `APIKey` documents, keeping the minted ones."""
        self._declared = list(keys)
        self._rebuild()

    def _rebuild(self) -> None:
        by_id, by_hash = {}, {}
        for key in self._declared + self._minted:
            if key.revoked:
                continue
            by_id[key.key_id] = key
            by_hash[key.secret_sha256] = key
        self._by_id, self._by_hash = by_id, by_hash

    @property
    def enabled(self) -> bool:
        return self.required or bool(self._by_id)

    def authenticate(self, authorization: bytes | None, model: str) -> ApiKey | AuthFailure:
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return AuthFailure(401, "missing_api_key", "send your key as `Authorization: Bearer <key>`")
        text = authorization[7:].strip().decode("latin-1")
        key_id = key_id_of(text)
        key = self._by_id.get(key_id) if key_id else self._by_hash.get(hash_key(text))
        if key is None or not key.matches(text):
            return AuthFailure(401, "invalid_api_key", "the API key is not valid (unknown or revoked)")
        if key.expires_at is not None and key.expires_at <= time.time():
            return AuthFailure(401, "expired_api_key", f"API key {key.key_id} has expired; create a new one")
        if not key.allows_model(model):
            allowed = ", ".join(key.models)
            return AuthFailure(
                403, "model_not_allowed", f"API key {key.key_id} may not call `{model}` (allowed: {allowed})"
            )
        return key
