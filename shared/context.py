"""Per-invocation context: the deadline every retry and wait respects, and the retry budget
(service tries) an outer layer hands to the service for one unit of work."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import DeadlineExceeded

Clock = Callable[[], float]

#: Time kept back from the platform's deadline to encode and return a response.
RESPONSE_MARGIN_S = 0.25


def lambda_remaining_s(lambda_context: object) -> float | None:
    """Seconds a Lambda invocation may still use (its remaining time less the response
    margin), or None when ``lambda_context`` is not a Lambda context. The one place the
    margin is applied, for every Lambda handler."""
    remaining = getattr(lambda_context, "get_remaining_time_in_millis", None)
    if not callable(remaining):
        return None
    left: float = remaining() / 1000.0 - RESPONSE_MARGIN_S
    return max(0.0, left)


@dataclass
class Context:
    """What an adapter knows about the invocation, handed to ``shared``.

    ``deadline`` is on the ``clock`` timeline (monotonic seconds by default).
    """

    deadline: float
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    clock: Clock = time.monotonic
    caller: str | None = None
    #: Headers the controls add to the answer (``x-ratelimit-*``), merged by shared.web.
    response_headers: dict[str, str] = field(default_factory=dict)
    #: The caller's W3C ``traceparent`` (HTTP header, queue message or batch line).
    traceparent: str | None = None
    #: What started the invocation: ``http`` | ``queue`` | ``batch`` | ``internal``.
    entry: str = "internal"
    #: The request's telemetry record (``shared.telemetry``), set when telemetry is on.
    telemetry: Any = field(default=None, repr=False, compare=False)
    #: The request's ``Cache-Control`` header (``no-cache`` / ``no-store`` are honoured).
    cache_control: str = ""
    #: Set by the response cache: ``"hit"`` | ``"miss"`` | ``"bypass"`` (None: no cache).
    #: A hit used no model tokens, so limits charge it nothing.
    cache_status: str | None = None
    #: Cosine distance of a semantic hit (``x-cache-distance``).
    cache_distance: float | None = None
    #: Service tries this invocation may still make for its unit of work, drawn by
    #: ``shared.retry.call_with_retry`` (one per try, each try failing over across the
    #: backends once). Set by the outer layer from the unit's one budget (a batch line, a job
    #: delivery: ``shared.retry.retry_share``); None: only ``INFER_MAX_RETRIES`` bounds them.
    #: See docs/architecture.md, "One retry budget".
    tries_left: int | None = None
    #: Backends that timed out during this invocation: a silent endpoint is not tried again
    #: for it (``shared.router``); the other candidates are.
    abandoned: set[str] = field(default_factory=set)
    #: The caller sent ``Prefer: respond-async``: when every backend is at capacity, answer
    #: at once (``AtCapacity``; the HTTP layer queues a job) instead of waiting for a slot.
    prefer_async: bool = False
    #: Our own id for this request toward the endpoint (``x-request-id`` /
    #: ``x-ms-client-request-id`` sent upstream) when ``request_id`` came from the caller:
    #: a caller's id is echoed and logged, never made the endpoint's or a slot's id.
    call_id: str | None = None
    #: A stream's usage as the endpoint reported it (set when the stream ends), also when
    #: the caller did not ask for it and its usage event was left out of the stream.
    stream_usage: dict[str, Any] | None = None
    #: What the answer cost (the serving backend's ``price`` x its usage); None: unpriced.
    cost: float | None = None

    @property
    def upstream_id(self) -> str:
        """The request id sent to the endpoint: ours, whatever the caller sent."""
        return self.call_id or self.request_id

    @property
    def served_from_cache(self) -> bool:
        """True when the answer came from the response cache: charge no tokens for it."""
        return self.cache_status == "hit"

    @classmethod
    def with_timeout(
        cls, seconds: float, *, request_id: str | None = None, clock: Clock = time.monotonic
    ) -> Context:
        return cls(
            deadline=clock() + seconds,
            request_id=request_id or uuid.uuid4().hex,
            clock=clock,
        )

    @classmethod
    def from_lambda(cls, lambda_context: object, *, request_id: str | None = None) -> Context:
        """Deadline from Lambda's ``get_remaining_time_in_millis`` (less a response margin)."""
        seconds = lambda_remaining_s(lambda_context)
        rid = request_id or getattr(lambda_context, "aws_request_id", None)
        return cls.with_timeout(30.0 if seconds is None else seconds, request_id=rid)

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def check(self) -> float:
        """Remaining seconds, or ``DeadlineExceeded`` when none are left."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded("the invocation deadline passed before the model answered")
        return left
