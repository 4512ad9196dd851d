"""Rate limits shared by gateway replicas through Redis: the same token buckets, kept in Redis hashes.

Each bucket is a hash `<prefix>rl:<scope>:<requests|tokens>` with its level and the time it was
last updated. The Lua scripts read the time from Redis (`TIME`), never from the gateway, so
replicas whose clocks disagree still refill the same bucket by the same amount; and a script runs
alone in Redis, so "check every scope, then charge every scope" is atomic across replicas. A key
expires once its bucket would have refilled to full (a full bucket and a missing one are the same),
so idle scopes cost nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from .base import UNAVAILABLE_RETRY_AFTER_S, Admission, FailureMode, Limit, LimitsUnavailableError
from .buckets import TOKENS, admission, buckets_of
from .redis_link import LuaScript, RedisLink

# KEYS: one hash per bucket. ARGV: window_s, then capacity and cost of each bucket.
# Reply: index of the refusing bucket (0: admitted), wait in seconds, each bucket's level (after the
# charge when admitted). Numbers travel as strings: Redis would truncate a Lua number to an integer.
_ADMIT = LuaScript(
    "rate_admit",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local levels = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i])
  local rate = cap / window
  local level = cap
  local saved = redis.call('HMGET', KEYS[i], 'level', 'at')
  if saved[1] then
    level = math.min(cap, tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) * rate)
  end
  levels[i] = level
  local need = math.min(tonumber(ARGV[2 * i + 1]), cap)
  if level < need and (need - level) / rate > wait then
    worst, wait = i, (need - level) / rate
  end
end
if worst == 0 then
  for i = 1, #KEYS do
    local cap = tonumber(ARGV[2 * i])
    levels[i] = levels[i] - tonumber(ARGV[2 * i + 1])
    redis.call('HSET', KEYS[i], 'level', string.format('%.17g', levels[i]), 'at', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - levels[i]) * window / cap * 1000) + 1000)
  end
end
local reply = {worst, string.format('%.17g', wait)}
for i = 1, #KEYS do reply[i + 2] = string.format('%.17g', levels[i]) end
return reply
""",
)

# KEYS: the token buckets an admission charged. ARGV: window_s, then capacity and the correction
# (actual - estimated tokens) of each. The level may go negative: debt delays the next request.
_SETTLE = LuaScript(
    "rate_settle",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i])
  local level = cap
  local saved = redis.call('HMGET', KEYS[i], 'level', 'at')
  if saved[1] then
    level = tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) * cap / window
  end
  level = math.min(cap, level - tonumber(ARGV[2 * i + 1]))
  redis.call('HSET', KEYS[i], 'level', string.format('%.17g', level), 'at', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) * window / cap * 1000) + 1000)
end
return 0
""",
)


class RedisRateLimiter:
    """A RateLimiter whose buckets live in Redis, so every replica draws from the same ones.

    `failure_mode` says what a request gets while Redis is unreachable or slower than
    `socket_timeout_s`: "open" admits it (unavailable=True) and "closed" refuses it with
    limited_by="limiter unavailable" (the gateway answers 503).
    """

    def __init__(
        self,
        url: str,
        *,
        window_s: float = 60.0,
        prefix: str = "computenet:",
        failure_mode: FailureMode = "open",
        socket_timeout_s: float = 0.1,
        reconnect_interval_s: float = 1.0,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._window_s = window_s
        self._prefix = prefix
        self._failure_mode = failure_mode
        self._link = RedisLink(
            url,
            what="rate limiter",
            socket_timeout_s=socket_timeout_s,
            reconnect_interval_s=reconnect_interval_s,
        )

    async def admit(self, limits: Sequence[Limit], estimated_tokens: int) -> Admission:
        buckets = buckets_of(limits, estimated_tokens)
        if not buckets:
            return admission([], [], None, 0.0, self._window_s, estimated_tokens)
        args = [repr(self._window_s)]
        for b in buckets:
            args += [str(b.capacity), str(b.cost)]
        try:
            reply = await self._link.run(_ADMIT, [self._key(b.scope, b.dimension) for b in buckets], args)
        except LimitsUnavailableError:
            return self._unavailable(estimated_tokens)
        worst, wait = int(reply[0]), float(reply[1])
        levels = [float(level) for level in reply[2:]]
        refused_by = worst - 1 if worst else None
        return admission(buckets, levels, refused_by, wait, self._window_s, estimated_tokens)

    async def settle(self, admission: Admission, actual_tokens: int) -> None:
        delta = actual_tokens - admission.estimated_tokens
        if not admission.allowed or admission.unavailable or delta == 0 or not admission.token_limits:
            return
        args = [repr(self._window_s)]
        for _, capacity in admission.token_limits:
            args += [str(capacity), str(delta)]
        keys = [self._key(scope, TOKENS) for scope, _ in admission.token_limits]
        with contextlib.suppress(
            LimitsUnavailableError
        ):  # logged by the link; a lost correction only skews one window
            await self._link.run(_SETTLE, keys, args)

    async def close(self) -> None:
        await self._link.close()

    def _key(self, scope: str, dimension: str) -> str:
        return f"{self._prefix}rl:{scope}:{dimension}"

    def _unavailable(self, estimated_tokens: int) -> Admission:
        if self._failure_mode == "open":
            return Admission(True, unavailable=True, estimated_tokens=estimated_tokens)
        retry = UNAVAILABLE_RETRY_AFTER_S
        headers = {"retry-after": str(int(retry)), "retry-after-ms": str(int(retry * 1000))}
        return Admission(False, retry, "limiter unavailable", headers, unavailable=True)
