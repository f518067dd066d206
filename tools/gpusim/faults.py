"""Which model request fails, and how. Decisions only: protocol modules carry them out.

Precedence for each model request (health, metrics, models and admin routes never fail):
1. the ``x-gpusim-fail`` header (with optional ``x-gpusim-retry-after`` seconds);
2. the scheduled faults posted to ``/admin/faults``, oldest first: each fails the next
   ``count`` requests (-1: until cleared) and/or every request for ``for_s`` seconds;
3. the global ``rate``: each request fails with that probability, with a kind drawn
   uniformly from ``types`` (seeded, so a run is reproducible).

Kinds: "429", "503", "500" (an error response in the protocol's envelope; 429 and 503 carry
``retry-after`` and ``retry-after-ms`` unless ``retry_after`` is null), "reset" (the TCP
connection is aborted with RST before any response), "timeout" (nothing is sent until the
client gives up), "midstream" (the response starts, ``after`` chunks go out, then the
connection is aborted), and for OpenAI-protocol streams:

- "stall": ``after`` chunks go out, then nothing until the client gives up (or ``hang_s``);
- "slow_first_token": the headers go out at once, the first token ``delay_s`` late;
- "malformed": chunk number ``after`` is sent cut in half (not JSON), the rest follows;
- "no_done": the whole answer and its usage, but the connection closes without ``[DONE]``;
- "context_length": the 400 vLLM answers when prompt + max_tokens exceed the context;
- "content_filter": Azure OpenAI's 400 ``content_filter`` refusal, with its reasons.

``after`` defaults to ``--midstream-chunks``; a fault posted with ``"after": N`` or sent with
the ``x-gpusim-fail-after`` header uses N.
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
AFTER_HEADER = "x-gpusim-fail-after"
DELAY_HEADER = "x-gpusim-fail-delay"
#: Kinds answered with an HTTP error status (the rest act on the connection or the stream).
STATUS_OF = {"429": 429, "503": 503, "500": 500, "context_length": 400, "content_filter": 400}


class FaultSpecError(ValueError):
    """A fault request (header or admin body) that names an unknown kind or bad numbers."""


@dataclass(frozen=True)
class Fault:
    type: str
    retry_after: float | None  # None: the error carries no Retry-After
    after: int | None = None  # chunks before a stream fault (None: --midstream-chunks)
    delay_s: float = 1.0  # how late "slow_first_token" sends its first token

    @property
    def status(self) -> int | None:
        """HTTP status for the error kinds, None for connection and stream kinds."""
        return STATUS_OF.get(self.type)


@dataclass
class ScheduledFault:
    type: str
    count: int  # remaining; -1 = unlimited
    until: float | None  # monotonic deadline, None = no time limit
    retry_after: float | None
    after: int | None = None
    delay_s: float = 1.0

    def active(self, now: float) -> bool:
        return self.count != 0 and (self.until is None or now < self.until)

    def describe(self, now: float) -> dict[str, Any]:
        left = None if self.until is None else max(0.0, self.until - now)
        return {"type": self.type, "count": self.count, "for_s": left,
                "retry_after": self.retry_after, "after": self.after,
                "delay_s": self.delay_s}  # fmt: skip

    def fault(self) -> Fault:
        return Fault(self.type, self.retry_after, self.after, self.delay_s)


def _check_type(kind: str) -> str:
    if kind not in FAULT_TYPES:
        raise FaultSpecError(f"unknown fault type {kind!r}; known: {', '.join(FAULT_TYPES)}")
    return kind


def _after(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise FaultSpecError("after must be a whole number of chunks >= 0")
    return int(value)


#: ``schedule``'s default for ``retry_after``: the server's ``--retry-after``.
DEFAULT: Any = object()


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
        retry_after: float | None = DEFAULT,
        after: int | None = None,
        delay_s: float = 1.0,
    ) -> ScheduledFault:
        """Queue a fault; with neither ``count`` nor ``for_s`` it fails the next request.
        ``retry_after=None`` sends no Retry-After at all."""
        _check_type(kind)
        if count is None:
            count = -1 if for_s is not None else 1
        if count < -1 or count == 0:
            raise FaultSpecError("count must be positive or -1 (until cleared)")
        if for_s is not None and for_s <= 0:
            raise FaultSpecError("for_s must be positive")
        if delay_s < 0:
            raise FaultSpecError("delay_s must be >= 0")
        fault = ScheduledFault(
            kind,
            count,
            None if for_s is None else time.monotonic() + for_s,
            self.default_retry_after if retry_after is DEFAULT else retry_after,
            after,
            delay_s,
        )
        self._queue.append(fault)
        return fault

    def schedule_from_json(self, body: Any) -> list[ScheduledFault]:
        """``/admin/faults`` body: one object or a list; ``rate``/``types`` set the rate."""
        items = body if isinstance(body, list) else [body]
        parsed: list[dict[str, Any]] = []
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
            after = _after(item.get("after"))
            spec: dict[str, Any] = {"kind": kind, "count": count, "after": after}
            if item.get("for_s") is not None:
                spec["for_s"] = _number(item["for_s"], "for_s")
            if "retry_after" in item:  # null: no Retry-After header at all
                ra = item["retry_after"]
                spec["retry_after"] = None if ra is None else _number(ra, "retry_after")
            if item.get("delay_s") is not None:
                spec["delay_s"] = _number(item["delay_s"], "delay_s")
            parsed.append(spec)
        if rate is not None:
            self.set_rate(*rate)
        return [self.schedule(spec.pop("kind"), **spec) for spec in parsed]

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
            retry: float | None = self.default_retry_after
            if raw is not None:
                retry = None if raw.strip() == "none" else _number(raw, RETRY_AFTER_HEADER)
            delay = headers.get(DELAY_HEADER)
            return Fault(_check_type(forced.strip()), retry, _after(headers.get(AFTER_HEADER)),
                         1.0 if delay is None else _number(delay, DELAY_HEADER))  # fmt: skip
        now = time.monotonic()
        while self._queue and not self._queue[0].active(now):
            self._queue.popleft()
        if self._queue:
            head = self._queue[0]
            if head.count > 0:
                head.count -= 1
            return head.fault()
        if self.rate > 0 and self._rng.random() < self.rate:
            return Fault(self._rng.choice(self.types), self.default_retry_after)
        return None
