"""``INFER_CACHE``: the response cache's settings, parsed on first use.

``{"mode": "off" | "exact" | "semantic", "ttl_s": 300, "scope": "caller" | "shared",
"max_entries": 1000, "max_bytes": 33554432, "max_entry_bytes": 1048576,
"semantic": {"embeddings_model": "...", "distance_threshold": 0.1, "ignore_system": false}}``

``INFER_STATE_URL`` (``redis://`` / ``rediss://``) moves the exact cache from the process
into Redis; the semantic mode needs it (a Redis with the Query Engine).
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import ConfigError


class SemanticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    embeddings_model: str = Field(min_length=1)
    distance_threshold: float = Field(default=0.1, ge=0, le=2)
    ignore_system: bool = False


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["off", "exact", "semantic"] = "off"
    ttl_s: int = Field(default=300, ge=1)
    scope: Literal["caller", "shared"] = "caller"
    max_entries: int = Field(default=1000, ge=1)
    max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: The largest answer stored (bigger ones are served, not cached): bounds what one
    #: request can write into a Redis it shares with the limits' counters.
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1024)
    semantic: SemanticConfig | None = None
    state_url: str | None = None

    @model_validator(mode="after")
    def _semantic_needs(self) -> CacheConfig:
        if self.mode == "semantic":
            if self.semantic is None:
                raise ValueError("mode 'semantic' needs 'semantic': {'embeddings_model': ...}")
            if not self.state_url:
                raise ValueError(
                    "mode 'semantic' needs INFER_STATE_URL (Redis with the Query Engine)"
                )
        return self


def load_cache_config() -> CacheConfig:
    """Parse ``INFER_CACHE`` (JSON object, or a bare mode name) and ``INFER_STATE_URL``."""
    raw = os.environ.get("INFER_CACHE", "").strip()
    state_url = os.environ.get("INFER_STATE_URL", "").strip() or None
    if raw in ("", "off", "exact", "semantic"):
        data: object = {"mode": raw or "off"}
    else:
        try:
            data = json.loads(raw)
        except ValueError:
            raise ConfigError("invalid configuration: INFER_CACHE: not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError("invalid configuration: INFER_CACHE: expected a JSON object")
    try:
        return CacheConfig.model_validate({**data, "state_url": state_url})
    except ValidationError as exc:
        problems = "; ".join(
            (
                "INFER_CACHE: field " + ".".join(map(str, e["loc"])) + ": "
                if e["loc"]
                else "INFER_CACHE: "
            )
            + str(e["msg"])
            for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
