"""Adaptive concurrency (AIMD) that keeps a model endpoint busy without overloading it.

- Slow start: until the first sign of congestion the limit grows by one per success
  (it doubles every round trip), from ``start``.
- Then additive increase: ``+1/limit`` per success (one more slot per round trip).
- Growth holds while the per-token latency (EWMA of latency / completion tokens) is above
  ``tolerance`` times the best seen: queueing inside the endpoint shows up there first.
- 429/503: multiplicative decrease (``limit *= backoff``, at most once per round trip, since
  every request in flight sees the same overload) and no new start before the endpoint's
  Retry-After has passed.
- Never below ``floor`` nor above ``ceiling`` (the backends' ``max_concurrency``).

Pure bookkeeping with an injectable clock; ``acquire`` is the only coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from shared.errors import BackendRateLimited, BackendUnavailable, InferenceError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

EWMA_ALPHA = 0.1


class AdaptiveLimiter:
    def __init__(
        self,
        *,
        start: int,
        ceiling: int,
        floor: int = 1,
        backoff: float = 0.7,
        tolerance: float = 3.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.limit = float(min(max(start, self.floor), self.ceiling))
        self.backoff = backoff
        self.tolerance = tolerance
        self.in_flight = 0
        self.slow_start = True
        self.hold_until = 0.0
        self.throttled = 0
        self._clock = clock
        self._sleep = sleep
        self._last_cut = float("-inf")
        self._best: float | None = None
        self._ewma: float | None = None
        self._latency = 1.0
        self._freed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- decisions -------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a slot when one is free and no Retry-After pause is running."""
        if self._clock() < self.hold_until or self.in_flight >= int(self.limit):
            return False
        self.in_flight += 1
        return True

    def latency_ok(self) -> bool:
        if self._best is None or self._ewma is None:
            return True
        return self._ewma <= self.tolerance * self._best

    def on_success(self, latency_s: float, tokens: int = 1) -> None:
        self._release()
        per_token = latency_s / max(tokens, 1)
        self._best = per_token if self._best is None else min(self._best, per_token)
        a = EWMA_ALPHA
        self._ewma = per_token if self._ewma is None else (1 - a) * self._ewma + a * per_token
        self._latency = (1 - a) * self._latency + a * latency_s
        if not self.latency_ok():
            self.slow_start = False
            return
        step = 1.0 if self.slow_start else 1.0 / max(self.limit, 1.0)
        self.limit = min(float(self.ceiling), self.limit + step)

    def on_error(self, err: InferenceError) -> None:
        """A failed attempt: 429/503 shrink the limit and pause for Retry-After."""
        self._release()
        if isinstance(err, BackendRateLimited | BackendUnavailable):
            self.on_congestion(err.retry_after)

    def on_congestion(self, retry_after: float | None) -> None:
        """The endpoint is full (429/503, or a circuit the router opened for it)."""
        now = self._clock()
        self.throttled += 1
        self.slow_start = False
        if now - self._last_cut >= self._latency:
            self.limit = max(float(self.floor), self.limit * self.backoff)
            self._last_cut = now
        if retry_after and retry_after > 0:
            self.hold_until = max(self.hold_until, now + min(retry_after, 120.0))

    def on_abandon(self) -> None:
        """The attempt ended without telling anything about the endpoint (deadline, bad line)."""
        self._release()

    def _release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self._freed.set()

    # -- waiting ---------------------------------------------------------------------------

    async def acquire(self, until: float | None = None) -> bool:
        """Wait for a slot; ``False`` when ``until`` (clock time) passes first."""
        while not self.try_acquire():
            now = self._clock()
            if until is not None and now >= until:
                return False
            if now < self.hold_until:
                await self._sleep(min(self.hold_until - now, 1.0))
                continue
            loop = asyncio.get_running_loop()
            if loop is not self._loop:  # a process may run invocations on successive loops
                self._freed, self._loop = asyncio.Event(), loop
            self._freed.clear()
            wait = 1.0 if until is None else max(0.0, min(1.0, until - now))
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._freed.wait()
        return True
