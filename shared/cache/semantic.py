"""The semantic store: an exact key first, then a vector range query with RedisVL.

An entry is the embedding of the last user message's text (or the prompt), tagged with the
scope (a hash of the caller, or one shared scope) and the *context*: a hash of the model,
the operation, every earlier turn and every other parameter (see ``shared.cache.keys``).
A hit must carry both tags exactly and lie within ``distance_threshold`` (cosine distance,
0..2, lower is stricter, as RedisVL's ``SemanticCache``). Only the wording of the last user
message may differ, so a paraphrase hits while the same words after different earlier
turns, another model or another caller do not.

The embedding is computed through the service's own uncached path for
``embeddings_model``: the same router, identity, retries and failover as any embeddings
call. It is computed once per request (kept on the lookup for the store after a miss).
Entries live in one Query Engine index per embeddings model and vector size, created on
first use (``FT.CREATE``), with the same TTL as exact entries. RedisVL's ``SemanticCache``
is not used directly: its constructor is synchronous, issues index commands on a
synchronous client it builds from a URL (so the managed-identity sign-in of
``shared.state`` cannot reach it), and it refreshes an entry's TTL on every hit; the index
and query below are the same RedisVL objects it uses.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared import state
from shared.backends.base import Result
from shared.cache.base import Hit, Lookup
from shared.cache.config import SemanticConfig
from shared.cache.keys import SemanticParts, scope_tag, semantic_parts
from shared.cache.redis_store import RedisExactStore
from shared.context import Context
from shared.schemas import Operation

log = logging.getLogger("shared.cache")

#: Longest the embeddings call of one lookup may take (the request's deadline bounds it too).
EMBED_TIMEOUT_S = 5.0

Complete = Callable[[Operation, dict[str, Any], Context], Awaitable[Result]]


def vector_bytes(vector: list[float]) -> bytes:
    """FLOAT32 little-endian, as the Query Engine stores vectors."""
    packed = array.array("f", vector)
    if sys.byteorder != "little":  # pragma: no cover - x86/arm64 are little-endian
        packed.byteswap()
    return packed.tobytes()


class SemanticStore:
    kind = "redis-semantic"

    def __init__(self, config: SemanticConfig, call: Complete) -> None:
        self.config = config
        self.exact = RedisExactStore()
        self._call = call
        self._indexes: dict[tuple[int, int], Any] = {}
        self._created: set[int] = set()
        self._model_tag = hashlib.sha256(config.embeddings_model.encode()).hexdigest()[:12]

    @property
    def timeout_s(self) -> float:
        return EMBED_TIMEOUT_S + 4 * state.get_state_settings().timeout_s

    def available(self) -> bool:
        return state.available()

    # -- the store ------------------------------------------------------------------------

    async def get(self, req: Lookup) -> Hit | None:
        hit = await self.exact.get(req)
        if hit is not None:
            return hit
        parts, vector = await self._embedded(req)
        if parts is None or vector is None:
            return None
        blob = vector_bytes(vector)
        dims = len(vector)
        threshold = self.config.distance_threshold

        from redisvl.query import VectorRangeQuery  # imported before the timed call
        from redisvl.query.filter import Tag

        async def query(r: Any) -> Any:
            index = await self._index(r, dims)
            q = VectorRangeQuery(
                vector=blob,
                vector_field_name="vector",
                return_fields=["response"],
                distance_threshold=threshold,
                num_results=1,
                return_score=True,
                filter_expression=(Tag("scope") == scope_tag(req.scope))
                & (Tag("context") == parts.context),
                dtype="float32",
            )
            try:
                return await index.query(q)
            except Exception as exc:
                if "index" in str(exc).lower():  # dropped (FLUSHALL, failover): create it again
                    self._created.discard(dims)
                raise

        rows = await state.run("cache", req.ctx, query)
        for row in rows:
            response = row.get("response")
            if response:
                return Hit(str(response).encode(), distance=float(row["vector_distance"]))
        return None

    async def put(self, req: Lookup, body: bytes, ttl_s: int) -> None:
        await self.exact.put(req, body, ttl_s)
        parts, vector = await self._embedded(req)
        if parts is None or vector is None:
            return
        dims = len(vector)
        entry_id = hashlib.sha256(
            f"{req.scope}\n{parts.context}\n{parts.text}".encode()
        ).hexdigest()
        record = {
            "id": entry_id,
            "scope": scope_tag(req.scope),
            "context": parts.context,
            "vector": vector_bytes(vector),
            "response": body.decode(),
            "inserted_at": time.time(),
        }

        import redisvl.index  # noqa: F401 - imported before the timed call

        async def load(r: Any) -> Any:
            index = await self._index(r, dims)
            return await index.load([record], id_field="id", ttl=ttl_s)

        await state.run("cache", req.ctx, load)

    # -- embeddings and the index ---------------------------------------------------------

    async def _embedded(self, req: Lookup) -> tuple[SemanticParts | None, list[float] | None]:
        if "semantic" not in req.memo:
            parts = semantic_parts(
                req.scope, req.op, req.payload, ignore_system=self.config.ignore_system
            )
            vector = await self._embed(parts.text, req.ctx) if parts is not None else None
            req.memo["semantic"] = (parts, vector)
        found: tuple[SemanticParts | None, list[float] | None] = req.memo["semantic"]
        return found

    async def _embed(self, text: str, ctx: Context) -> list[float] | None:
        """The text's embedding through the router; None (logged) when that fails."""
        sub = dataclasses.replace(ctx, deadline=min(ctx.deadline, ctx.clock() + EMBED_TIMEOUT_S))
        payload = {"model": self.config.embeddings_model, "input": text}
        try:
            result = await self._call(Operation.EMBEDDINGS, payload, sub)
            vector = result.json()["data"][0]["embedding"]
            if not isinstance(vector, list) or not vector:
                raise ValueError("no embedding in the answer")
            return [float(v) for v in vector]
        except Exception as exc:  # no embedding: this request uses the exact key only
            state.failures["cache-embeddings"] += 1
            log.warning(
                "cache embeddings via %r failed request_id=%s: %s: %s",
                self.config.embeddings_model,
                ctx.request_id,
                type(exc).__name__,
                str(exc)[:200],
            )
            return None

    async def _index(self, client: Any, dims: int) -> Any:
        name = state.key("cache", "semantic", self._model_tag, str(dims))
        index = self._indexes.get((id(client), dims))
        if index is None:
            from redisvl.index import AsyncSearchIndex

            schema = {
                "index": {"name": name, "prefix": name, "storage_type": "hash"},
                "fields": [
                    {"name": "scope", "type": "tag"},
                    {"name": "context", "type": "tag"},
                    {
                        "name": "vector",
                        "type": "vector",
                        "attrs": {
                            "dims": dims,
                            "distance_metric": "cosine",
                            "algorithm": "flat",
                            "datatype": "float32",
                        },
                    },
                ],
            }
            index = AsyncSearchIndex.from_dict(schema, redis_client=client)
            self._indexes[(id(client), dims)] = index
        if dims not in self._created:
            try:
                await index.create(overwrite=False)
            except Exception as exc:
                if "already exists" not in str(exc).lower():  # another instance won the race
                    raise
            self._created.add(dims)
        return index
