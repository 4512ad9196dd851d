"""Budgets shared by gateway replicas through Redis: one hash per scope and period.

An account `<prefix>budget:<scope>:<period key>` (period key "day:2025-01-14", "month:2025-01" or
"total") holds `spent` and the amounts held for requests in flight, summed per reservation slot
(`h:<slot>`, slot = Redis time / (reservation TTL / 10)). Reserve checks every cap and holds the
amount in every account in one script, so replicas cannot together overshoot a cap; settle moves
the hold into `spent`. Slots older than the reservation TTL are dropped: a gateway that died
mid-request does not keep its holds forever. Day and month accounts expire two days after their
period ends; "total" accounts never expire.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from .accounts import (
    EPSILON_USD,
    RESERVATION_SLOTS,
    expires_in_s,
    period_window,
    refusal,
    tightest_caps,
)
from .base import (
    UNAVAILABLE_RETRY_AFTER_S,
    BudgetCap,
    FailureMode,
    Hold,
    LimitsUnavailableError,
    Period,
    Reservation,
)
from .redis_link import LuaScript, RedisLink

# KEYS: one account per cap. ARGV: amount, slot_s, slots kept, epsilon, then limit and TTL of each.
# Reply: index of the refusing cap (0: held), the slot, each account's spend plus holds (before).
_RESERVE = LuaScript(
    "budget_reserve",
    """
local t = redis.call('TIME')
local slot = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) / tonumber(ARGV[2]))
local oldest = slot - tonumber(ARGV[3]) + 1
local amount = tonumber(ARGV[1])
local committed = {}
local refused = 0
for i = 1, #KEYS do
  local total = 0
  local fields = redis.call('HGETALL', KEYS[i])
  for j = 1, #fields, 2 do
    if fields[j] ~= 'spent' and tonumber(string.sub(fields[j], 3)) < oldest then
      redis.call('HDEL', KEYS[i], fields[j])
    else
      total = total + tonumber(fields[j + 1])
    end
  end
  committed[i] = string.format('%.17g', total)
  if refused == 0 and total + amount > tonumber(ARGV[3 + 2 * i]) + tonumber(ARGV[4]) then
    refused = i
  end
end
if refused == 0 then
  for i = 1, #KEYS do
    redis.call('HINCRBYFLOAT', KEYS[i], 'h:' .. string.format('%d', slot), ARGV[1])
    if tonumber(ARGV[4 + 2 * i]) > 0 then redis.call('EXPIRE', KEYS[i], ARGV[4 + 2 * i]) end
  end
end
local reply = {refused, slot}
for i = 1, #KEYS do reply[i + 2] = committed[i] end
return reply
""",
)

# KEYS: the accounts held in. ARGV: amount held, actual cost, slot (-1: nothing held), epsilon,
# then the TTL of each account (a settle after an outage may be the first write of a period).
_SETTLE = LuaScript(
    "budget_settle",
    """
local field = 'h:' .. ARGV[3]
local release = string.format('%.17g', -tonumber(ARGV[1]))
for i = 1, #KEYS do
  if ARGV[3] ~= '-1' and redis.call('HEXISTS', KEYS[i], field) == 1 then
    local left = tonumber(redis.call('HINCRBYFLOAT', KEYS[i], field, release))
    if math.abs(left) < tonumber(ARGV[4]) then redis.call('HDEL', KEYS[i], field) end
  end
  redis.call('HINCRBYFLOAT', KEYS[i], 'spent', ARGV[2])
  if tonumber(ARGV[4 + i]) > 0 then redis.call('EXPIRE', KEYS[i], ARGV[4 + i]) end
end
return 0
""",
)

# KEYS: one account. ARGV: spend from metered usage, TTL. Never lowers the spend: other replicas
# may have settled requests that the metering has not recorded yet.
_SEED = LuaScript(
    "budget_seed",
    """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
if tonumber(ARGV[1]) > spent then redis.call('HSET', KEYS[1], 'spent', ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
""",
)

_SPENT = LuaScript("budget_spent", "return redis.call('HGET', KEYS[1], 'spent') or '0'")


class RedisBudgetLedger:
    """A BudgetLedger whose accounts live in Redis, shared by every gateway replica.

    `clock` (unix seconds) names the current period; reservation slots use Redis's own clock.
    `spent` and `seed` raise LimitsUnavailableError when Redis cannot answer; reserve answers by
    `failure_mode` ("open": allowed, "closed": refused, both with unavailable=True) and settle logs.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "computenet:",
        clock: Callable[[], float] = time.time,
        failure_mode: FailureMode = "open",
        socket_timeout_s: float = 0.1,
        reconnect_interval_s: float = 1.0,
        reservation_ttl_s: float = 900.0,
    ) -> None:
        self._prefix = prefix
        self._clock = clock
        self._failure_mode = failure_mode
        self._slot_s = reservation_ttl_s / RESERVATION_SLOTS
        self._link = RedisLink(
            url,
            what="budget ledger",
            socket_timeout_s=socket_timeout_s,
            reconnect_interval_s=reconnect_interval_s,
        )

    async def reserve(self, caps: Sequence[BudgetCap], amount_usd: float) -> Reservation:
        now_s = self._clock()
        rows = [(cap, period_window(cap.period, now_s)) for cap in tightest_caps(caps)]
        held = tuple(Hold(cap.scope, window.key, window.resets_at) for cap, window in rows)
        if not rows:
            return Reservation(allowed=True, amount_usd=amount_usd)
        args = [repr(float(amount_usd)), repr(self._slot_s), str(RESERVATION_SLOTS), repr(EPSILON_USD)]
        for cap, window in rows:
            args += [repr(float(cap.limit_usd)), str(expires_in_s(window.resets_at, now_s))]
        keys = [self._key(hold.scope, hold.period_key) for hold in held]
        try:
            reply = await self._link.run(_RESERVE, keys, args)
        except LimitsUnavailableError:
            return self._unavailable(amount_usd, held)
        refused, slot = int(reply[0]), int(reply[1])
        if refused:
            cap, window = rows[refused - 1]
            return refusal(cap, window, float(reply[refused + 1]), amount_usd, now_s)
        return Reservation(allowed=True, amount_usd=amount_usd, held=held, slot=slot)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        if not reservation.allowed or not reservation.held:
            return
        now_s = self._clock()
        args = [repr(float(reservation.amount_usd)), repr(float(actual_usd)), str(reservation.slot)]
        args += [repr(EPSILON_USD)] + [str(expires_in_s(h.resets_at, now_s)) for h in reservation.held]
        keys = [self._key(hold.scope, hold.period_key) for hold in reservation.held]
        with contextlib.suppress(
            LimitsUnavailableError
        ):  # logged by the link; metering still records the cost, and seed restores it
            await self._link.run(_SETTLE, keys, args)

    async def spent(self, scope: str, period: Period) -> float:
        key = self._key(scope, period_window(period, self._clock()).key)
        return float(await self._link.run(_SPENT, [key], []))

    async def seed(self, scope: str, period: Period, spent_usd: float) -> None:
        now_s = self._clock()
        window = period_window(period, now_s)
        args = [repr(float(spent_usd)), str(expires_in_s(window.resets_at, now_s))]
        await self._link.run(_SEED, [self._key(scope, window.key)], args)

    async def close(self) -> None:
        await self._link.close()

    def _key(self, scope: str, period_key: str) -> str:
        return f"{self._prefix}budget:{scope}:{period_key}"

    def _unavailable(self, amount_usd: float, held: tuple[Hold, ...]) -> Reservation:
        if self._failure_mode == "open":  # nothing held, but settle still records the cost
            return Reservation(allowed=True, amount_usd=amount_usd, unavailable=True, held=held)
        return Reservation(
            allowed=False,
            amount_usd=amount_usd,
            limited_by="budget ledger unavailable",
            retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
            unavailable=True,
        )
