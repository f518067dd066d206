"""Retry policy: openai-python's rules as pure functions, bounded by the invocation deadline.

``should_retry`` and ``retry_delay`` mirror ``_should_retry`` / ``_calculate_retry_timeout``
in openai-python's ``_base_client.py``: retry 408, 409, 429, >= 500 and connection errors;
``x-should-retry`` overrides; a server delay from ``retry-after-ms`` or ``retry-after``
(seconds, float, or HTTP date) is honoured when 0 < delay <= 120 s (a longer one means
"do not retry"); otherwise ``min(0.5 * 2**n, 8)`` with jitter ``1 - 0.25 * random()``.

Unlike a client library, a serverless function cannot wait for long: ``call_with_retry``
never sleeps past the invocation's deadline and gives up early when the wait would leave no
time for another attempt, re-raising the last error (with its Retry-After for the caller).

One budget across layers: a batch line or a job that retries the service call itself does
not multiply its retries by the service's. It has ``unit_budget`` service tries in all; each
of its own tries gets a ``retry_share`` of what is left (``Context.tries_left``), which
``call_with_retry`` draws from. docs/architecture.md ("One retry budget") gives the numbers.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from shared.context import Context
from shared.errors import DeadlineExceeded, InferenceError
from shared.telemetry import record_retry

T = TypeVar("T")

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_SERVER_DELAY = 120.0
#: Do not start an attempt with less than this left: it could not finish anyway.
MIN_ATTEMPT_S = 0.05


def should_retry(status: int | None, headers: Mapping[str, str] | None = None) -> bool:
    """Whether a response (``status=None``: connection error or timeout) is worth retrying."""
    if headers is not None:
        override = headers.get("x-should-retry")
        if override == "true":
            return True
        if override == "false":
            return False
    if status is None:
        return True
    return status in (408, 409, 429) or status >= 500


def server_delay(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """The delay the server asked for, in seconds, or ``None`` when it gave none we can read."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms") or headers.get("x-ms-retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    when = email.utils.mktime_tz(parsed)
    return float(when - (time.time() if now is None else now))


def backoff_delay(retries_taken: int, rand: float) -> float:
    """Capped exponential backoff with openai-python's jitter (``rand`` in [0, 1))."""
    base = min(INITIAL_RETRY_DELAY * 2.0**retries_taken, MAX_RETRY_DELAY)
    return base * (1 - 0.25 * rand)


def retry_delay(retry_after: float | None, retries_taken: int, rand: float) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when the server said not to retry.

    A server delay in (0, 120] is used as is; one above 120 s means give up; none (or <= 0)
    falls back to backoff.
    """
    if retry_after is not None:
        if retry_after > MAX_SERVER_DELAY:
            return None
        if retry_after > 0:
            return retry_after
    return backoff_delay(retries_taken, rand)


Sleep = Callable[[float], Awaitable[None]]


async def call_with_retry(
    attempt: Callable[[int], Awaitable[T]],
    ctx: Context,
    *,
    max_retries: int,
    sleep: Sleep = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Run ``attempt(n)`` until it succeeds, a non-retryable error, or the budget runs out.

    The budget is the smallest of ``max_retries``, the tries the unit of work has left
    (``ctx.tries_left``, when an outer layer set it: each try draws one; the first try is
    always made) and the invocation's remaining time: each attempt is cancelled when the
    deadline passes (``DeadlineExceeded``, 504), and a wait that would leave less than
    ``MIN_ATTEMPT_S`` for the next attempt is not started.
    """
    retries = 0
    while True:
        left = ctx.check()
        if ctx.tries_left is not None:
            ctx.tries_left -= 1
        try:
            async with asyncio.timeout(left):
                return await attempt(retries)
        except TimeoutError:
            raise DeadlineExceeded(
                "the invocation deadline passed before the model answered"
            ) from None
        except InferenceError as err:
            if not err.retryable or not err.retry_here or retries >= max_retries:
                raise
            if ctx.tries_left is not None and ctx.tries_left <= 0:
                raise  # the unit of work's budget is spent
            delay = retry_delay(err.retry_after, retries, rand())
            if delay is None or delay + MIN_ATTEMPT_S >= ctx.remaining():
                raise
            record_retry(ctx, err)
            await sleep(delay)
            retries += 1


def unit_budget(max_retries: int, outer_retries: int) -> int:
    """Service tries one unit of work may make in all, whatever layer retries: the
    service's own ``1 + max_retries`` (``INFER_MAX_RETRIES``) plus one for each retry the
    outer layer may make (a batch line's ``INFER_BATCH_LINE_RETRIES``; a job's further
    deliveries and throttling deferrals). Added, not multiplied."""
    return 1 + max(0, max_retries) + max(0, outer_retries)


def retry_share(left: int, max_retries: int, later: int) -> int:
    """Service tries the outer layer's next try may use: the service's ``1 + max_retries``,
    less one kept back for each of the ``later`` retries the outer layer may still make,
    and at least one (0 only when nothing is ``left``). So the first try gets the service's
    retries, and each later one gets one try more, until the unit's budget is spent."""
    if left <= 0:
        return 0
    return max(1, min(1 + max(0, max_retries), left - max(0, later)))
