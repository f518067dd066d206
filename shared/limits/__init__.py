"""Caller limits (``INFER_LIMITS``): rpm, tpm, max_parallel and token quotas.

``get_limiter()`` is ``None`` when no limits are configured: the hot path then costs one
environment lookup and imports nothing. With ``INFER_STATE_URL`` set the counters live in
Redis (``redis_provider``), exact across instances; otherwise in this process (``memory``),
which holds per instance. See docs/controls.md.
"""

from __future__ import annotations

import time

from shared.lifecycle import Singleton
from shared.limits.base import (
    NOOP,
    Admission,
    CallerQuotaExceeded,
    CallerRateLimited,
    Limiter,
    estimate_prompt_tokens,
    format_duration,
    reservation_tokens,
)
from shared.limits.config import get_limit_settings, limits_configured

__all__ = [
    "NOOP",
    "Admission",
    "CallerQuotaExceeded",
    "CallerRateLimited",
    "Limiter",
    "estimate_prompt_tokens",
    "format_duration",
    "get_limiter",
    "reservation_tokens",
]


def _build() -> Limiter | None:
    settings = get_limit_settings() if limits_configured() else None
    rules = settings.limits if settings is not None else []
    if not rules:
        return None
    from shared.state import configured

    if configured():
        from shared.limits.redis_provider import RedisProvider

        provider: object = RedisProvider()
    else:
        from shared.limits.memory import MemoryProvider

        provider = MemoryProvider()
    assert settings is not None
    return Limiter(rules, provider, clock=time.time,  # type: ignore[arg-type]
                   on_state_down=settings.limits_on_state_down)  # fmt: skip


_limiter: Singleton[Limiter | None] = Singleton(_build)


def get_limiter() -> Limiter | None:
    """The process's limiter, built on first use; ``None`` when ``INFER_LIMITS`` is unset."""
    return _limiter.get()
