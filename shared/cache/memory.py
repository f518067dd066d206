"""The in-process exact store: a bounded LRU with a TTL, per instance of the function."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from shared.cache.base import Hit, Lookup


class MemoryStore:
    """At most ``max_entries`` entries and ``max_bytes`` of bodies; least recently used go first."""

    kind = "memory"

    @property
    def timeout_s(self) -> float:
        return 1.0

    def __init__(
        self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def available(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, req: Lookup) -> Hit | None:
        entry = self._entries.get(req.key)
        if entry is None:
            return None
        expires, body = entry
        if self._clock() >= expires:
            self._drop(req.key)
            return None
        self._entries.move_to_end(req.key)
        return Hit(body)

    async def put(self, req: Lookup, body: bytes, ttl_s: int) -> None:
        if len(body) > self.max_bytes:
            return
        self._drop(req.key)
        self._entries[req.key] = (self._clock() + ttl_s, body)
        self._bytes += len(body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])
