"""Counters in Redis: exact across every instance of every function.

Each decision is one Lua script run on the server (``EVALSHA``): it reads the server's own
clock (``TIME``, so instances' clocks never matter), checks every counter of the request,
and charges all of them or none. Settlement is a second script. The function never reads a
counter and writes it back. A request's keys share the caller's hash tag (``{caller}``), so
the scripts also run on a clustered Redis (Azure Managed Redis OSS cluster policy,
ElastiCache cluster mode).

A token quota is a hash per counter whose field is the period (``20261206``: hour, day or
month, read from the server's clock in the script, so no instance's clock decides when a
period ends) and which carries no expiry: under the managed default eviction policy
(``volatile-lru``) only keys with an expiry are evicted, so a cache that fills Redis cannot
evict a spent quota and reset it. A period's field replaces the last one's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.limits.base import PARALLEL_RETRY_MS, Check, Decision

log = logging.getLogger("shared.limits")

if TYPE_CHECKING:
    from shared.context import Context

PRELUDE = """
-- the server's clock, in ms
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- a rate bucket's theoretical arrival time (GCRA), never in the past
local function tat_of(key, now)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  return tat
end
-- the period of a token quota, from the server's clock: its id and ms until it ends
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local function period(kind, now)
  local secs = math.floor(now / 1000)
  local day = math.floor(secs / 86400)
  local y, m, d = civil_from_days(day)
  if kind == 'hour' then
    local h = math.floor((secs % 86400) / 3600)
    return string.format('%04d%02d%02dT%02d', y, m, d, h), (secs - secs % 3600 + 3600) * 1000 - now
  elseif kind == 'day' then
    return string.format('%04d%02d%02d', y, m, d), (day + 1) * 86400000 - now
  end
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return string.format('%04d%02d', y, m), days_from_civil(ny, nm, 1) * 86400000 - now
end
"""

ACQUIRE = (
    PRELUDE
    + """
local now = clock()
local rid = ARGV[1]
local n = #KEYS
local out = {0, 0}
local refused = 0
local refused_quota = false
local retry = 0
local newv = {}
local fields = {}
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local kind = ARGV[b + 1]
  local limit = tonumber(ARGV[b + 2])
  local span = tonumber(ARGV[b + 3])
  local cost = tonumber(ARGV[b + 4])
  local remaining, reset = 0, 0
  if kind == 'rate' then
    local per = span / limit
    local tat = tat_of(KEYS[i], now)
    local need = math.min(cost, limit) * per
    if tat - now + need > span then
      local wait = tat - now + need - span
      remaining = math.floor((span - (tat - now)) / per)
      reset = math.ceil(tat - now)
      if refused == 0 or (not refused_quota and wait > retry) then
        refused, retry = i, wait
      end
      newv[i] = tat
    else
      local new = tat + cost * per
      newv[i] = new
      remaining = math.floor((span - (new - now)) / per)
      reset = math.ceil(new - now)
    end
  elseif kind == 'quota' then
    local field, left = period(ARGV[b + 5], now)
    fields[i] = field
    local used = tonumber(redis.call('HGET', KEYS[i], field) or 0)
    if used + math.min(cost, limit) > limit then
      remaining = limit - used
      if not refused_quota then refused, retry, refused_quota = i, left, true end
    else
      remaining = limit - used - cost
    end
    reset = left
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local held = redis.call('ZCARD', KEYS[i])
    if held >= limit and not redis.call('ZSCORE', KEYS[i], rid) then
      remaining = 0
      if refused == 0 or (not refused_quota and ARGV_PAR > retry) then
        refused, retry = i, ARGV_PAR
      end
    else
      remaining = limit - held - 1
    end
  end
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
if refused == 0 then
  for i = 1, n do
    local b = 1 + (i - 1) * 5
    local kind = ARGV[b + 1]
    local span = tonumber(ARGV[b + 3])
    local cost = tonumber(ARGV[b + 4])
    if kind == 'rate' then
      redis.call('SET', KEYS[i], tostring(newv[i]), 'PX', math.ceil(newv[i] - now) + 1000)
    elseif kind == 'quota' then
      redis.call('HINCRBY', KEYS[i], fields[i], cost)
      for _, old in ipairs(redis.call('HKEYS', KEYS[i])) do
        if old ~= fields[i] then redis.call('HDEL', KEYS[i], old) end
      end
    else
      redis.call('ZADD', KEYS[i], now + span, rid)
      redis.call('PEXPIRE', KEYS[i], span + 60000)
    end
  end
end
out[1] = refused
out[2] = math.ceil(retry)
return out
""".replace("ARGV_PAR", str(PARALLEL_RETRY_MS))
)

SETTLE = (
    PRELUDE
    + """
local now = clock()
local rid = ARGV[1]
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local kind = ARGV[b + 1]
  local limit = tonumber(ARGV[b + 2])
  local span = tonumber(ARGV[b + 3])
  local delta = tonumber(ARGV[b + 4])
  if kind == 'rate' and delta ~= 0 then
    local per = span / limit
    local tat = tat_of(KEYS[i], now)
    local new = tat + delta * per
    if new <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], tostring(new), 'PX', math.ceil(new - now) + 1000)
    end
  elseif kind == 'quota' and delta ~= 0 then
    local field = period(ARGV[b + 5], now)
    if redis.call('HEXISTS', KEYS[i], field) == 1 then  -- the period it was charged in
      local used = redis.call('HINCRBY', KEYS[i], field, delta)
      if used < 0 then redis.call('HSET', KEYS[i], field, 0) end
    end
  elseif kind == 'parallel' then
    redis.call('ZREM', KEYS[i], rid)
  end
end
return 1
"""
)


PEEK = (
    PRELUDE
    + """
local now = clock()
local out = {}
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local kind = ARGV[b + 1]
  local limit = tonumber(ARGV[b + 2])
  local span = tonumber(ARGV[b + 3])
  local used, reset = 0, 0
  if kind == 'rate' then
    local per = span / limit
    local tat = tat_of(KEYS[i], now)
    used = math.ceil((tat - now) / per)
    reset = math.ceil(tat - now)
  elseif kind == 'quota' then
    local field, left = period(ARGV[b + 5], now)
    used = tonumber(redis.call('HGET', KEYS[i], field) or 0)
    reset = left
  else
    used = redis.call('ZCOUNT', KEYS[i], now, '+inf')
  end
  out[#out + 1] = used
  out[#out + 1] = reset
end
return out
"""
)


def _argv(request_id: str, checks: Sequence[Check], values: Sequence[int]) -> list[Any]:
    argv: list[Any] = [request_id]
    for c, v in zip(checks, values, strict=True):
        argv += [c.kind, c.limit, c.span_ms, v, c.period or "-"]
    return argv


class RedisProvider:
    name = "redis"

    def __init__(self) -> None:
        self._scripts: dict[int, tuple[Any, Any]] = {}
        self._peek: dict[int, Any] = {}
        self._policy_checked = False

    async def _check_policy(self, redis: Any) -> None:
        """Once per process: warn when Redis may evict keys without an expiry (an
        ``allkeys-*`` policy), which would reset counters; managed Redis that refuses
        CONFIG is not asked again."""
        self._policy_checked = True
        try:
            found = await redis.config_get("maxmemory-policy")
        except Exception:  # CONFIG disabled (managed Redis): its default is volatile-lru
            return
        policy = str(found.get("maxmemory-policy", ""))
        if policy.startswith("allkeys"):
            log.warning(
                "Redis maxmemory-policy is %s: under memory pressure it may evict limit "
                "counters and reset a spent quota; use volatile-lru (the managed default) "
                "or noeviction, or a separate Redis for the cache (docs/controls.md)",
                policy,
            )

    def _bound(self, redis: Any) -> tuple[Any, Any]:
        found = self._scripts.get(id(redis))
        if found is None:  # register_script: EVALSHA, loading the script once on NOSCRIPT
            found = (redis.register_script(ACQUIRE), redis.register_script(SETTLE))
            self._scripts = {id(redis): found}
        return found

    async def acquire(self, checks: Sequence[Check], request_id: str, ctx: Context) -> Decision:
        from shared.state import run

        keys = [c.key for c in checks]
        argv = _argv(request_id, checks, [c.cost for c in checks])

        async def call(redis: Any) -> list[int]:
            if not self._policy_checked:
                await self._check_policy(redis)
            acquire, _ = self._bound(redis)
            return list(await acquire(keys=keys, args=argv))

        out = await run("limits", ctx, call)
        refused = int(out[0])
        remaining = [int(v) for v in out[2::2]]
        reset = [int(v) for v in out[3::2]]
        return Decision(refused - 1 if refused else None, int(out[1]), remaining, reset)

    async def peek(self, checks: Sequence[Check], ctx: Context) -> list[tuple[int, int]]:
        """(used, ms until it resets) of each counter, charging nothing."""
        from shared.state import run

        keys = [c.key for c in checks]
        argv = _argv("", checks, [0 for _ in checks])

        async def call(redis: Any) -> list[int]:
            script = self._peek.get(id(redis))
            if script is None:
                script = self._peek[id(redis)] = redis.register_script(PEEK)
            return list(await script(keys=keys, args=argv))

        out = await run("limits", ctx, call)
        return [(int(out[i]), int(out[i + 1])) for i in range(0, len(out), 2)]

    async def settle(
        self, checks: Sequence[Check], deltas: Sequence[int], request_id: str, ctx: Context | None
    ) -> None:
        from shared.state import run

        keys = [c.key for c in checks]
        argv = _argv(request_id, checks, deltas)

        async def call(redis: Any) -> None:
            _, settle = self._bound(redis)
            await settle(keys=keys, args=argv)

        # after the answer: bounded by INFER_STATE_TIMEOUT_S, not by a deadline already spent
        await run("limits", None, call)
