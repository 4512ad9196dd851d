"""One Redis connection for the limits: cached Lua scripts, short timeouts, and a pause after failures.

Every decision is one Lua script run with EVALSHA (the script is sent in full only when Redis
answers NOSCRIPT: after a restart or SCRIPT FLUSH), so one round trip checks and updates every
scope atomically. When Redis cannot be reached or is slower than the socket timeout, the call
raises LimitsUnavailableError and the link stops asking for `reconnect_interval_s`: requests then
get their fail-open / fail-closed answer at once instead of each waiting out a timeout. The next
call after the pause tries again, and redis-py opens a fresh connection, so recovery needs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import LimitsUnavailableError

logger = logging.getLogger(__name__)

WARN_EVERY_S = 10.0  # an outage logs one warning per this many seconds, not one per request


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class RedisLink:
    """A redis.asyncio client that runs LuaScripts and reports outages as LimitsUnavailableError."""

    def __init__(
        self,
        url: str,
        *,
        what: str,
        socket_timeout_s: float,
        reconnect_interval_s: float,
    ) -> None:
        self._what = what
        self._reconnect_interval_s = reconnect_interval_s
        # One retry, on connection errors only: it replaces a pooled connection that died while Redis
        # restarted. Timeouts are not retried: the script may have run, and it must not run twice.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._client = Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=retry,
            decode_responses=True,
        )
        self._paused_until_s = 0.0
        self._warned_at_s = -WARN_EVERY_S
        self._failing = False

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[str]) -> Any:
        """The script's reply, or LimitsUnavailableError when Redis could not answer."""
        now_s = time.monotonic()
        if now_s < self._paused_until_s:
            raise LimitsUnavailableError(
                f"{self._what}: Redis failed less than {self._reconnect_interval_s}s ago"
            )
        try:
            reply = await self._eval(script, keys, args)
        except (RedisError, OSError) as error:
            if isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
                self._paused_until_s = now_s + self._reconnect_interval_s
            self._failed(script, error, now_s)
            raise LimitsUnavailableError(f"{self._what}: {error}") from error
        if self._failing:
            self._failing = False
            logger.warning("%s: Redis answers again", self._what)
        return reply

    async def close(self) -> None:
        await self._client.aclose()

    async def _eval(self, script: LuaScript, keys: Sequence[str], args: Sequence[str]) -> Any:
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # EVAL runs it and caches it for the next EVALSHA
            return await self._client.eval(script.source, len(keys), *keys, *args)

    def _failed(self, script: LuaScript, error: Exception, now_s: float) -> None:
        self._failing = True
        if now_s - self._warned_at_s < WARN_EVERY_S:
            return
        self._warned_at_s = now_s
        logger.warning(
            "%s: Redis script %s failed (%s: %s); answering by the failure mode, "
            "retrying every %.1fs (this warning repeats at most every %.0fs)",
            self._what,
            script.name,
            type(error).__name__,
            error,
            self._reconnect_interval_s,
            WARN_EVERY_S,
        )
