"""Listener start-up with storage down: HTTP serves at once, each listener retries with backoff.

The Functions host does the same: when a queue or blob listener cannot reach storage it logs
one line naming the function and the reason, keeps its HTTP functions up, and retries the
listener in the background until storage answers; then the listener starts, no restart needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("devhost")

#: Start-up calls make one attempt each (no SDK retries), bounded by these seconds, so the
#: listener's own backoff decides when to try again.
START_TIMEOUT_S = 5.0
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0

START_KWARGS: dict[str, Any] = {
    "retry_total": 0,
    "connection_timeout": START_TIMEOUT_S,
    "read_timeout": START_TIMEOUT_S,
}


def short_reason(exc: BaseException) -> str:
    """The first line of an SDK error (its message carries the whole response otherwise)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


async def start_with_backoff(
    what: str,
    start: Callable[[], None],
    stop: asyncio.Event,
    *,
    first_s: float = FIRST_RETRY_S,
    max_s: float = MAX_RETRY_S,
) -> bool:
    """Run blocking ``start`` until it succeeds (True) or ``stop`` is set (False).

    Logs one WARNING line when ``what`` cannot start, another only when the reason changes,
    and one INFO line once it has started.
    """
    delay = first_s
    last: str | None = None
    attempts = 0
    while not stop.is_set():
        attempts += 1
        try:
            await asyncio.to_thread(start)
        except Exception as exc:  # storage down or refusing: retry with backoff
            reason = short_reason(exc)
            if reason != last:
                log.warning(
                    "devhost: %s cannot start (%s); retrying with backoff up to %gs",
                    what,
                    reason,
                    max_s,
                )
                last = reason
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, max_s)
            continue
        if attempts > 1:
            log.info("devhost: %s started after %d attempts", what, attempts)
        return True
    return False
