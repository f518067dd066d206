"""Which model request fails, and how. Decisions only: protocol modules carry them out.

Precedence for each model request (health, metrics, models and admin routes never fail):
1. the ``x-gpusim-fail`` header (with optional ``x-gpusim-retry-after`` seconds);
2. the scheduled faults posted to ``/admin/faults``, oldest first: each fails the next
   ``count`` requests (-1: until cleared) and/or every request for ``for_s`` seconds;
3. the global ``rate``: each request fails with that probability, with a kind drawn
   uniformly from ``types`` (seeded, so a run is reproducible).

Kinds: "429", "503", "500" (an error response in the protocol's envelope; 429 and 503 carry
``retry-after`` and ``retry-after-ms``), "reset" (the TCP connection is aborted with RST
before any response), "timeout" (nothing is sent until the client gives up), "midstream"
(the response starts, a few chunks go out, then the connection is aborted).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import FAULT_TYPES

FAIL_HEADER = "x-gpusim-fail"
RETRY_AFTER_HEADER = "x-gpusim-retry-after"


class FaultSpecError(ValueError):
    """A fault request (header or admin body) that names an unknown kind or bad numbers."""


@dataclass(frozen=True)
class Fault:
    type: str
    retry_after: float

    @property
    def status(self) -> int | None:
        """HTTP status for the error kinds, None for connection-level kinds."""
        return int(self.type) if self.type.isdigit() else None


@dataclass
class ScheduledFault:
    type: str
    count: int  # remaining; -1 = unlimited
    until: float | None  # monotonic deadline, None = no time limit
    retry_after: float

    def active(self, now: float) -> bool:
        return self.count != 0 and (self.until is None or now < self.until)

    def describe(self, now: float) -> dict[str, Any]:
        left = None if self.until is None else max(0.0, self.until - now)
        return {"type": self.type, "count": self.count, "for_s": left,
                "retry_after": self.retry_after}  # fmt: skip


def _check_type(kind: str) -> str:
    if kind not in FAULT_TYPES:
        raise FaultSpecError(f"unknown fault type {kind!r}; known: {', '.join(FAULT_TYPES)}")
    return kind


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultSpecError(f"{name} must be a number")
    try:
        return float(value)
    except ValueError:
        raise FaultSpecError(f"{name} must be a number, got {value!r}") from None


class FaultInjector:
    def __init__(self, rate: float, types: Sequence[str], retry_after: float, seed: int) -> None:
        self.default_retry_after = retry_after
        self._rng = random.Random(seed)
        self._queue: deque[ScheduledFault] = deque()
        self.set_rate(rate, types)

    def set_rate(self, rate: float, types: Sequence[str] | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise FaultSpecError("rate must be within 0..1")
        if types is not None:
            if not types:
                raise FaultSpecError("types must not be empty")
            self.types = tuple(_check_type(t) for t in types)
        self.rate = rate

    def schedule(
        self,
        kind: str,
        *,
        count: int | None = None,
        for_s: float | None = None,
        retry_after: float | None = None,
    ) -> ScheduledFault:
        """Queue a fault; with neither ``count`` nor ``for_s`` it fails the next request."""
        _check_type(kind)
        if count is None:
            count = -1 if for_s is not None else 1
        if count < -1 or count == 0:
            raise FaultSpecError("count must be positive or -1 (until cleared)")
        if for_s is not None and for_s <= 0:
            raise FaultSpecError("for_s must be positive")
        fault = ScheduledFault(
            kind,
            count,
            None if for_s is None else time.monotonic() + for_s,
            self.default_retry_after if retry_after is None else retry_after,
        )
        self._queue.append(fault)
        return fault

    def schedule_from_json(self, body: Any) -> list[ScheduledFault]:
        """``/admin/faults`` body: one object or a list; ``rate``/``types`` set the rate."""
        items = body if isinstance(body, list) else [body]
        parsed: list[tuple[str, int | None, float | None, float | None]] = []
        rate: tuple[float, list[str] | None] | None = None
        for item in items:
            if not isinstance(item, dict):
                raise FaultSpecError("expected a JSON object or a list of objects")
            if "rate" in item:
                types = item.get("types")
                if types is not None and not isinstance(types, list):
                    raise FaultSpecError("types must be a list of fault types")
                rate = (_number(item["rate"], "rate"), [str(t) for t in types or []] or None)
                if "type" not in item:
                    continue
            kind = _check_type(str(item.get("type", "")))
            count = item.get("count")
            if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
                raise FaultSpecError("count must be an integer")
            for_s = None if item.get("for_s") is None else _number(item["for_s"], "for_s")
            ra = item.get("retry_after")
            parsed.append((kind, count, for_s, None if ra is None else _number(ra, "retry_after")))
        if rate is not None:
            self.set_rate(*rate)
        return [self.schedule(k, count=c, for_s=f, retry_after=r) for k, c, f, r in parsed]

    def clear(self) -> None:
        """Drop every scheduled fault and set the rate to 0: no request fails afterwards."""
        self._queue.clear()
        self.rate = 0.0

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "rate": self.rate,
            "types": list(self.types),
            "scheduled": [f.describe(now) for f in self._queue if f.active(now)],
        }

    def decide(self, headers: Mapping[str, str]) -> Fault | None:
        """The fault for one model request (consuming a scheduled count), or None."""
        forced = headers.get(FAIL_HEADER)
        if forced:
            raw = headers.get(RETRY_AFTER_HEADER)
            retry = self.default_retry_after if raw is None else _number(raw, RETRY_AFTER_HEADER)
            return Fault(_check_type(forced.strip()), retry)
        now = time.monotonic()
        while self._queue and not self._queue[0].active(now):
            self._queue.popleft()
        if self._queue:
            head = self._queue[0]
            if head.count > 0:
                head.count -= 1
            return Fault(head.type, head.retry_after)
        if self.rate > 0 and self._rng.random() < self.rate:
            return Fault(self._rng.choice(self.types), self.default_retry_after)
        return None
