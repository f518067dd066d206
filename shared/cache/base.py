"""The cache's flow around one model call, whatever stores the entries.

``ResponseCache.complete`` / ``.stream`` wrap the service's uncached calls:

- ``Cache-Control: no-store`` (or a request the cache cannot replay faithfully, e.g. one
  asking for ``logprobs``): neither read nor write, ``x-cache: bypass``.
- ``Cache-Control: no-cache``: ask the endpoint, then store, ``x-cache: miss``.
- Otherwise look up; a hit is answered from the entry (``x-cache: hit``, and
  ``x-cache-distance`` for a semantic hit); a miss asks the endpoint and stores the answer
  (a stream is stored once it completed: assembled from its chunks as they pass).
- A store that fails (Redis down, timeout) answers nothing: the request goes to the
  endpoint with ``x-cache: bypass``; the error is logged and counted, never returned, and
  the store is left alone for a cool-down (``INFER_STATE_COOLDOWN_S`` for Redis).

The outcome is left on the context: ``ctx.cache_status`` (``"hit"`` means the caller used no
model tokens: limits must not charge it) and ``ctx.cache_distance``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.backends.base import Result
from shared.cache.config import CacheConfig
from shared.cache.keys import exact_key, scope_of
from shared.cache.sse import StreamAssembler, replay
from shared.context import Context
from shared.schemas import Operation
from shared.streaming import ForwardStream

log = logging.getLogger("shared.cache")

#: Seconds between two warnings about a failing store (every failure is counted).
LOG_EVERY_S = 30.0

Complete = Callable[[Operation, dict[str, Any], Context], Awaitable[Result]]
OpenStream = Callable[[Operation, dict[str, Any], Context], Awaitable[ForwardStream]]


@dataclass
class Lookup:
    """One request as the stores see it; stores may memoise work on it (an embedding)."""

    op: Operation
    payload: dict[str, Any]
    scope: str
    key: str
    ctx: Context
    memo: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    body: bytes
    distance: float | None = None


class Store(Protocol):
    """Where entries live: ``get`` returns a cached body, ``put`` keeps one for ``ttl_s``."""

    kind: str

    @property
    def timeout_s(self) -> float:
        """Longest a get or put may take (the request's deadline bounds it too)."""
        ...

    def available(self) -> bool:
        """False while the store cools down after a failure (the cache is skipped)."""
        ...

    async def get(self, req: Lookup) -> Hit | None: ...

    async def put(self, req: Lookup, body: bytes, ttl_s: int) -> None: ...


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    stored: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def cache_directives(header: str) -> set[str]:
    """``Cache-Control`` directive names, lower case (``no-cache``, ``no-store``...)."""
    return {part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


def _replayable(op: Operation, payload: dict[str, Any]) -> bool:
    """False for requests whose answer the cache cannot give back faithfully."""
    if op is Operation.EMBEDDINGS:
        return True
    return not (payload.get("logprobs") or payload.get("top_logprobs") or payload.get("echo"))


def _cacheable(op: Operation, body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or "error" in data:
        return None
    field_name = "data" if op is Operation.EMBEDDINGS else "choices"
    return data if isinstance(data.get(field_name), list) and data[field_name] else None


class ResponseCache:
    def __init__(self, config: CacheConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.stats = CacheStats()
        self._logged_at = -LOG_EVERY_S

    # -- the two entry points -------------------------------------------------------------

    async def complete(
        self, op: Operation, payload: dict[str, Any], ctx: Context, call: Complete
    ) -> Result:
        req, read = self._begin(op, payload, ctx)
        if req is None:
            return await call(op, payload, ctx)
        if read:
            hit = await self._get(req)
            if hit is not None:
                self._mark_hit(ctx, hit)
                return Result(content=hit.body, backend="cache")
        self._mark_miss(ctx)
        result = await call(op, payload, ctx)
        if _cacheable(op, result.content) is not None:
            await self._put(req, result.content)
        return result

    async def stream(
        self, op: Operation, payload: dict[str, Any], ctx: Context, call: OpenStream
    ) -> ForwardStream:
        req, read = self._begin(op, payload, ctx)
        if req is None:
            return await call(op, payload, ctx)
        options = payload.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        if read:
            hit = await self._get(req)
            body = _cacheable(op, hit.body) if hit is not None else None
            # An entry stored without usage cannot answer a request that wants the usage chunk.
            if hit is not None and body is not None and (body.get("usage") or not include_usage):
                self._mark_hit(ctx, hit)
                return ForwardStream(replay(body, op, include_usage), None)
        self._mark_miss(ctx)
        opened = await call(op, payload, ctx)
        # aclose of the outer stream closes the endpoint's even when the tee never started.
        return ForwardStream(self._tee(opened, req), opened)

    # -- flow -----------------------------------------------------------------------------

    def _begin(
        self, op: Operation, payload: dict[str, Any], ctx: Context
    ) -> tuple[Lookup | None, bool]:
        """(the lookup, whether to read) or (None, _) when the cache stays out of it."""
        directives = cache_directives(ctx.cache_control)
        if "no-store" in directives or not _replayable(op, payload):
            self._bypass(ctx)
            return None, False
        if not self.store.available():
            self._bypass(ctx)
            return None, False
        scope = scope_of(ctx.caller, self.config.scope)
        req = Lookup(op, payload, scope, exact_key(scope, op, payload), ctx)
        return req, "no-cache" not in directives

    def _bypass(self, ctx: Context) -> None:
        ctx.cache_status = "bypass"
        self.stats.bypassed += 1

    def _mark_hit(self, ctx: Context, hit: Hit) -> None:
        ctx.cache_status = "hit"
        ctx.cache_distance = hit.distance
        self.stats.hits += 1

    def _mark_miss(self, ctx: Context) -> None:
        # A store that failed during the lookup left the request uncached: say so.
        if ctx.cache_status != "bypass":
            ctx.cache_status = "miss"
            self.stats.misses += 1

    async def _tee(self, opened: ForwardStream, req: Lookup) -> AsyncGenerator[bytes, None]:
        """The stream, stored once complete: before its ``[DONE]`` reaches the caller, so
        the caller's next request (on any instance) finds it."""
        assembler = StreamAssembler(req.op)
        stored = False
        try:
            async for chunk in opened:
                assembler.feed(chunk)
                if not stored and chunk.endswith(b"data: [DONE]\n\n"):
                    stored = True
                    await self._store(req, assembler)
                yield chunk
        finally:
            await opened.aclose()
        if not stored:
            await self._store(req, assembler)

    async def _store(self, req: Lookup, assembler: StreamAssembler) -> None:
        body = assembler.result()
        if body is not None:
            await self._put(
                req, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            )

    async def _get(self, req: Lookup) -> Hit | None:
        try:
            async with asyncio.timeout(self._budget(req.ctx)):
                return await self.store.get(req)
        except Exception as exc:  # the cache never fails a request
            self._failed("lookup", exc, req.ctx)
            return None

    async def _put(self, req: Lookup, body: bytes) -> None:
        if not self.store.available() or len(body) > self.config.max_entry_bytes:
            return  # an answer larger than max_entry_bytes is never cached
        try:
            async with asyncio.timeout(self._budget(req.ctx)):
                await self.store.put(req, body, self.config.ttl_s)
            self.stats.stored += 1
        except Exception as exc:
            self._failed("store", exc, req.ctx)

    def _budget(self, ctx: Context) -> float:
        return max(min(self.store.timeout_s, ctx.remaining()), 0.0)

    def _failed(self, what: str, exc: BaseException, ctx: Context) -> None:
        from shared.state import StateUnavailable  # only on failure: shared.state logs its own

        self.stats.errors += 1
        if ctx.cache_status != "hit":
            ctx.cache_status = "bypass"
        now = time.monotonic()
        if isinstance(exc, StateUnavailable) or now - self._logged_at < LOG_EVERY_S:
            return
        self._logged_at = now
        log.warning(
            "cache %s failed (%s store), request sent to the endpoint request_id=%s: %s: %s "
            "(errors so far: %d)",
            what,
            self.store.kind,
            ctx.request_id,
            type(exc).__name__,
            str(exc)[:200],
            self.stats.errors,
        )
