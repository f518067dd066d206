"""The exact store in Redis (``INFER_STATE_URL``): one key per answer, expiring after the TTL.

Every instance of every function sees the same entries. Keys are
``<INFER_STATE_KEY_PREFIX>cache:exact:<sha256>``; values are the answer's JSON body. Calls go
through ``shared.state.run``: bounded by ``INFER_STATE_TIMEOUT_S`` and the deadline, and a
failure is logged, counted and cools Redis down (the cache is skipped meanwhile).
"""

from __future__ import annotations

from typing import Any

from shared import state
from shared.cache.base import Hit, Lookup


async def warm() -> None:
    """Build the client (importing redis) before a timed call: an import is not Redis time."""
    if state.available():
        await state.get_redis()


class RedisExactStore:
    kind = "redis"

    @property
    def timeout_s(self) -> float:
        return state.get_state_settings().timeout_s * 2

    def available(self) -> bool:
        return state.available()

    async def get(self, req: Lookup) -> Hit | None:
        name = state.key("cache", "exact", req.key)

        async def read(r: Any) -> Any:
            return await r.get(name)

        await warm()
        body = await state.run("cache", req.ctx, read)
        return Hit(bytes(body)) if body is not None else None

    async def put(self, req: Lookup, body: bytes, ttl_s: int) -> None:
        name = state.key("cache", "exact", req.key)

        async def write(r: Any) -> Any:
            return await r.set(name, body, ex=ttl_s)

        await warm()
        await state.run("cache", req.ctx, write)
