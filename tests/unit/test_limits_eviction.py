"""A spent token quota survives a cache that fills Redis to its memory limit.

Managed Redis evicts under ``volatile-lru`` by default (Azure Cache for Redis, ElastiCache):
only keys with an expiry are candidates. Cache entries expire; quota counters do not (a
hash per counter, the period a field), so a full cache evicts cache entries, never a quota.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis as redis_lib

from shared.cache.base import Lookup
from shared.cache.redis_store import RedisExactStore
from shared.context import Context
from shared.limits.base import CallerQuotaExceeded, Limiter
from shared.limits.config import LimitRule
from shared.limits.redis_provider import RedisProvider
from shared.schemas import Operation

PAYLOAD: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x" * 36}]}


@pytest.fixture
def small_redis(state_env: str) -> Any:
    client = redis_lib.Redis.from_url(state_env)
    client.config_set("maxmemory-policy", "volatile-lru")
    client.config_set("maxmemory", str(4 * 1024 * 1024))
    yield client
    client.config_set("maxmemory", "0")
    client.config_set("maxmemory-policy", "noeviction")


def test_a_spent_quota_survives_a_cache_filling_redis(small_redis: Any) -> None:
    import time

    lim = Limiter([LimitRule(caller="*", token_quota=100, quota_period="day")], RedisProvider(),
                  clock=time.time)  # fmt: skip

    async def main() -> None:
        spent = await lim.admit("c", "m", PAYLOAD, Context.with_timeout(10))
        await spent.settle(100)  # the whole quota
        with pytest.raises(CallerQuotaExceeded):
            await lim.admit("c", "m", PAYLOAD, Context.with_timeout(10))
        store = RedisExactStore()
        body = b"x" * 64 * 1024
        for i in range(200):  # 12.5 MB of answers into a 4 MB Redis
            req = Lookup(Operation.CHAT, PAYLOAD, "shared", f"k{i}", Context.with_timeout(10))
            await store.put(req, body, 300)
        assert int(small_redis.info("stats")["evicted_keys"]) > 0  # the cache was evicted
        with pytest.raises(CallerQuotaExceeded):  # the quota was not
            await lim.admit("c", "m", PAYLOAD, Context.with_timeout(10))

    asyncio.run(main())
