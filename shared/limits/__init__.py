"""Caller limits (``INFER_LIMITS``): rpm, tpm, max_parallel and token quotas.

``get_limiter()`` is ``None`` when no limits are configured: the hot path then costs one
environment lookup and imports nothing. With ``INFER_STATE_URL`` set the counters live in
Redis (``redis_provider``), exact across instances; otherwise in this process (``memory``),
which holds per instance. See docs/controls.md.
"""

from __future__ import annotations

import threading
import time

from shared.limits.base import (
    NOOP,
    Admission,
    CallerQuotaExceeded,
    CallerRateLimited,
    Limiter,
    count_stream_tokens,
    estimate_prompt_tokens,
    format_duration,
)
from shared.limits.config import get_limit_settings, limits_configured, reset_limit_settings

__all__ = [
    "NOOP",
    "Admission",
    "CallerQuotaExceeded",
    "CallerRateLimited",
    "Limiter",
    "count_stream_tokens",
    "estimate_prompt_tokens",
    "format_duration",
    "get_limiter",
    "reset_limiter",
]

_lock = threading.Lock()
_limiter: Limiter | None = None
_built = False


def get_limiter() -> Limiter | None:
    """The process's limiter, built on first use; ``None`` when ``INFER_LIMITS`` is unset."""
    global _limiter, _built
    if _built:
        return _limiter
    with _lock:
        if not _built:
            rules = get_limit_settings().limits if limits_configured() else []
            if rules:
                from shared.state import configured

                if configured():
                    from shared.limits.redis_provider import RedisProvider

                    provider: object = RedisProvider()
                else:
                    from shared.limits.memory import MemoryProvider

                    provider = MemoryProvider()
                _limiter = Limiter(rules, provider, clock=time.time)  # type: ignore[arg-type]
            _built = True
    return _limiter


def reset_limiter() -> None:
    global _limiter, _built
    with _lock:
        _limiter = None
        _built = False
    reset_limit_settings()
