"""In-process counters: exact within one instance, per instance across many (say so)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.limits.base import PARALLEL_RETRY_MS, Check, Decision

if TYPE_CHECKING:
    from shared.context import Context


def _ceil(ms: float) -> int:
    """Whole milliseconds, rounding up, but not up from float noise: ``(now + d) - now``
    is ``d`` plus a few 1e-9 ms when ``now`` is a large clock reading."""
    return math.ceil(round(ms, 6))


class MemoryProvider:
    """The same algorithms as the Redis script, under one lock."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._used: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires at ms)
        self._inflight: dict[str, dict[str, float]] = {}

    def _now(self) -> float:
        return self._clock() * 1000.0

    async def acquire(self, checks: Sequence[Check], request_id: str, ctx: Context) -> Decision:
        with self._lock:
            return self._acquire(checks, request_id)

    def _acquire(self, checks: Sequence[Check], request_id: str) -> Decision:
        now = self._now()
        n = len(checks)
        remaining = [0] * n
        reset = [0] * n
        new_values: list[float] = [0.0] * n
        refused: int | None = None
        retry = 0.0
        for i, c in enumerate(checks):
            if c.kind == "rate":
                per = c.span_ms / c.limit
                tat = max(self._tat.get(c.key, now), now)
                need = min(c.cost, c.limit) * per
                if tat - now + need > c.span_ms:
                    wait = tat - now + need - c.span_ms
                    remaining[i] = math.floor((c.span_ms - (tat - now)) / per)
                    reset[i] = _ceil(tat - now)
                    if refused is None or (checks[refused].kind != "quota" and wait > retry):
                        refused, retry = i, wait
                    new_values[i] = tat
                else:
                    new = tat + c.cost * per
                    new_values[i] = new
                    remaining[i] = math.floor((c.span_ms - (new - now)) / per)
                    reset[i] = _ceil(new - now)
            elif c.kind == "quota":
                used, expires = self._used.get(c.key, (0, 0.0))
                if expires <= now:
                    used = 0
                if used + min(c.cost, c.limit) > c.limit:
                    remaining[i] = c.limit - used
                    if refused is None or checks[refused].kind != "quota":
                        refused, retry = i, float(c.span_ms)
                else:
                    remaining[i] = c.limit - used - c.cost
                reset[i] = c.span_ms
                new_values[i] = used
            else:
                held = self._inflight.setdefault(c.key, {})
                for rid in [r for r, exp in held.items() if exp <= now]:
                    del held[rid]
                if len(held) >= c.limit and request_id not in held:
                    remaining[i] = 0
                    if refused is None or (
                        checks[refused].kind != "quota" and retry < PARALLEL_RETRY_MS
                    ):
                        refused, retry = i, float(PARALLEL_RETRY_MS)
                else:
                    remaining[i] = c.limit - len(held) - 1
        if refused is None:
            for i, c in enumerate(checks):
                if c.kind == "rate":
                    self._tat[c.key] = new_values[i]
                elif c.kind == "quota":
                    self._used[c.key] = (int(new_values[i]) + c.cost, now + c.span_ms)
                else:
                    self._inflight[c.key][request_id] = now + c.span_ms
        return Decision(refused, _ceil(retry), remaining, reset)

    async def peek(self, checks: Sequence[Check], ctx: Context) -> list[tuple[int, int]]:
        """(used, ms until it resets) of each counter, charging nothing."""
        with self._lock:
            now = self._now()
            out: list[tuple[int, int]] = []
            for c in checks:
                if c.kind == "rate":
                    per = c.span_ms / c.limit
                    tat = max(self._tat.get(c.key, now), now)
                    out.append((math.ceil((tat - now) / per), _ceil(tat - now)))
                elif c.kind == "quota":
                    used, expires = self._used.get(c.key, (0, 0.0))
                    out.append((used if expires > now else 0, c.span_ms))
                else:
                    held = self._inflight.get(c.key, {})
                    out.append((sum(1 for until in held.values() if until > now), 0))
            return out

    async def settle(
        self, checks: Sequence[Check], deltas: Sequence[int], request_id: str, ctx: Context | None
    ) -> None:
        with self._lock:
            now = self._now()
            for c, delta in zip(checks, deltas, strict=True):
                if c.kind == "rate" and delta:
                    per = c.span_ms / c.limit
                    tat = self._tat.get(c.key, now)
                    self._tat[c.key] = max(max(tat, now) + delta * per, now)
                elif c.kind == "quota" and delta:
                    used, expires = self._used.get(c.key, (0, now + c.span_ms))
                    self._used[c.key] = (max(0, used + delta), expires)
                elif c.kind == "parallel":
                    self._inflight.get(c.key, {}).pop(request_id, None)
