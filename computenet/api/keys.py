"""API keys: the record the store keeps and the gateway checks, and how keys are minted.

A key reads `cn-<key id>-<secret>`. The key id is public (it names the key in usage
records, logs and `computenet keys list`); the secret is shown once, at creation, and
only its SHA-256 is kept. Keys are long random strings, so a fast hash is the right
one (a password hash would cost milliseconds on every request for no gain), and the
id lets the gateway find the one record to compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from .tenants import BudgetPeriod

KEY_PREFIX = "cn-"
KEY_ID_BYTES = 6  # 12 hex characters: unique enough to name a key, too short to guess a secret
SECRET_BYTES = 24


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key rate limits and spend cap; None means not limited at this level."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_usd: float | None = None
    budget_period: BudgetPeriod = "month"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    secret_sha256: str  # hex digest of the whole key text
    models: tuple[str, ...] = ()  # public model names this key may call; empty means all
    expires_at: float | None = None  # unix seconds; None never expires
    admin: bool = False  # may call the control API; data-plane keys may not
    revoked: bool = False
    created_at: float = 0.0
    limits: KeyLimits = field(default_factory=KeyLimits)

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def matches(self, key_text: str) -> bool:
        """Constant-time check of a presented key against the stored hash."""
        return hmac.compare_digest(hash_key(key_text), self.secret_sha256)


def hash_key(key_text: str) -> str:
    return hashlib.sha256(key_text.encode()).hexdigest()


def mint_key() -> tuple[str, str]:
    """A fresh (key id, whole key text). Print the text once; store `hash_key(text)`."""
    key_id = secrets.token_hex(KEY_ID_BYTES)
    return key_id, f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(SECRET_BYTES)}"


def key_id_of(key_text: str) -> str | None:
    """The id inside a presented key, or None when it is not shaped like one of ours."""
    if not key_text.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key_text[len(KEY_PREFIX) :].partition("-")
    if not sep or not secret or len(key_id) != 2 * KEY_ID_BYTES:
        return None
    return key_id
