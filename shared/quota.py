"""A backend's own quota: the ``tpm`` / ``rpm`` its provider grants (an Azure OpenAI
deployment's tokens per minute, a PTU's throughput), shared by every caller and instance.

- A backend entry may declare ``tpm`` and/or ``rpm`` (per ``quota_window_s``, 60 s). They
  are charged like the caller limits (``shared.limits``: the same GCRA token buckets, in
  Redis when ``INFER_STATE_URL`` is set, exact across instances; in this process
  otherwise): a request reserves its prompt estimate plus its ``max_tokens`` (or
  ``INFER_MAX_TOKENS_CAP``) and is settled to the real usage when the answer carries one.
- A backend whose budget is spent is passed over like an open circuit until it would fit,
  so traffic spills to the next candidate (the next priority: pay-as-you-go behind a PTU)
  before the provider answers 429.
- What the provider says is left (``x-ratelimit-remaining-requests`` / ``-tokens`` with
  their ``-reset-`` times, sent by OpenAI and Azure OpenAI) is recorded as the metric
  ``infer.backend.quota_remaining`` and, until its reset, a backend whose remaining tokens
  cannot hold a request's reservation (or with no request left) is passed over the same way.
- Redis not answering: the quota is not charged for that request (logged and counted with
  the limits' failures, ``shared.state.failures["limits"]``); the provider's own 429 still
  fails over.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.context import Context
    from shared.limits.base import Check

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(text: str | None) -> float | None:
    """OpenAI's reset format (``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``) or plain seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


@dataclass
class Headroom:
    requests: int | None
    tokens: int | None
    until: float  # monotonic time the provider's window resets

    def fits(self, tokens: int, now: float) -> float | None:
        """None when a request of ``tokens`` fits, else seconds until the reset."""
        if now >= self.until:
            return None
        if (self.requests is not None and self.requests <= 0) or (
            self.tokens is not None and self.tokens < tokens
        ):
            return self.until - now
        return None


#: backend name -> what its provider said is left (this process's last answer)
headroom: dict[str, Headroom] = {}


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def note_headers(backend: str, headers: Mapping[str, str]) -> None:
    """Learn the provider's headroom from an answer's ``x-ratelimit-*`` headers."""
    requests = _int(headers.get("x-ratelimit-remaining-requests"))
    tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
    if requests is None and tokens is None:
        return
    resets = [
        r
        for r in (
            parse_reset(headers.get("x-ratelimit-reset-requests")),
            parse_reset(headers.get("x-ratelimit-reset-tokens")),
        )
        if r is not None
    ]
    until = time.monotonic() + (max(resets) if resets else 1.0)
    headroom[backend] = Headroom(requests, tokens, until)
    from shared import telemetry

    if requests is not None:
        telemetry.record_quota_headroom(backend, "requests", requests)
    if tokens is not None:
        telemetry.record_quota_headroom(backend, "tokens", tokens)


def reservation_tokens(payload: dict[str, Any], cap: int) -> int:
    """A request's worst case: its prompt estimate plus ``n`` times its ``max_tokens``."""
    from shared.limits.base import reservation_tokens as worst_case

    return worst_case(payload, cap)


class Reservation:
    """What one request reserved of a backend's quota; :meth:`settle` (once) charges the
    real usage instead."""

    __slots__ = ("checks", "quota", "reserved", "settled")

    def __init__(self, quota: BackendQuota, checks: list[Check], reserved: int) -> None:
        self.quota = quota
        self.checks = checks
        self.reserved = reserved
        self.settled = False

    async def settle(self, tokens: int | None) -> None:
        """``tokens`` used (None: keep the reservation)."""
        if self.settled or tokens is None:
            self.settled = True
            return
        self.settled = True
        delta = tokens - self.reserved
        deltas = [delta if c.metric == "tokens" else 0 for c in self.checks]
        if any(deltas):
            await self.quota.refund(self.checks, deltas)


class BackendQuota:
    """One backend's ``tpm`` / ``rpm``."""

    def __init__(self, backend: str, tpm: int | None, rpm: int | None, window_s: float) -> None:
        self.backend = backend
        self.tpm = tpm
        self.rpm = rpm
        self.window_ms = int(window_s * 1000)
        self._provider: Any = None

    def provider(self) -> Any:
        if self._provider is None:
            from shared.state import configured

            if configured():
                from shared.limits.redis_provider import RedisProvider

                self._provider = RedisProvider()
            else:
                from shared.limits.memory import MemoryProvider

                self._provider = MemoryProvider()
        return self._provider

    def checks(self, tokens: int) -> list[Check]:
        from shared.limits.base import Check
        from shared.state import key

        base = "{backend:" + self.backend + "}"
        out: list[Check] = []
        if self.rpm:
            out.append(Check("rate", key("quota", base, "rpm"), self.rpm, self.window_ms, 1,
                             "requests"))  # fmt: skip
        if self.tpm:
            out.append(Check("rate", key("quota", base, "tpm"), self.tpm, self.window_ms, tokens,
                             "tokens"))  # fmt: skip
        return out

    async def take(self, tokens: int, ctx: Context) -> tuple[Reservation | None, float]:
        """(a reservation, 0) when the request fits, else (None, seconds until it would)."""
        from shared.state import StateUnavailable

        checks = self.checks(tokens)
        try:
            decision = await self.provider().acquire(checks, f"quota-{ctx.request_id}", ctx)
        except StateUnavailable:
            return Reservation(self, [], tokens), 0.0  # not charged: counted by shared.state
        if decision.refused is not None:
            return None, max(decision.retry_ms, 1) / 1000.0
        return Reservation(self, checks, tokens), 0.0

    async def refund(self, checks: list[Check], deltas: list[int]) -> None:
        from shared.state import StateUnavailable

        with contextlib.suppress(StateUnavailable):  # logged and counted by shared.state
            await self.provider().settle(checks, deltas, "quota", None)
