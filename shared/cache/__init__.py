"""The response cache (``INFER_CACHE``): exact or semantic, in the process or in Redis.

Off unless ``INFER_CACHE`` asks for it; then :func:`build_cache` picks the store:

- ``exact`` without ``INFER_STATE_URL``: :class:`~shared.cache.memory.MemoryStore`, a bounded
  LRU with a TTL in this instance;
- ``exact`` with ``INFER_STATE_URL``: :class:`~shared.cache.redis_store.RedisExactStore`,
  shared by every instance;
- ``semantic``: :class:`~shared.cache.semantic.SemanticStore` (exact key, then RedisVL vector
  search on a Redis with the Query Engine).

A process without ``INFER_CACHE`` imports nothing but this module (no redis, redisvl, numpy).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.cache.base import Complete, ResponseCache


def build_cache(call: Complete) -> ResponseCache | None:
    """The cache ``INFER_CACHE`` asks for, or None. ``call`` is the service's uncached
    ``complete`` (the semantic store computes its embeddings with it)."""
    if os.environ.get("INFER_CACHE", "").strip() in ("", "off"):
        return None
    from shared.cache.config import load_cache_config

    config = load_cache_config()
    if config.mode == "off":
        return None
    from shared.cache.base import ResponseCache, Store

    store: Store
    if config.mode == "semantic":
        from shared.cache.semantic import SemanticStore

        assert config.semantic is not None  # validated
        store = SemanticStore(config.semantic, call)
    elif config.state_url:
        from shared.cache.redis_store import RedisExactStore

        store = RedisExactStore()
    else:
        from shared.cache.memory import MemoryStore

        store = MemoryStore(config.max_entries, config.max_bytes)
    return ResponseCache(config, store)
