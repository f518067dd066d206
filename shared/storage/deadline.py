"""Bound every storage call by what remains of the invocation.

A storage outage must become a quick, retryable failure of the message, not minutes inside
the SDK's own retries (Azure Storage's default ``ExponentialRetry`` sleeps 15 + 18 + 24 s
between four attempts; botocore's connect and read timeouts are 60 s each). So each call
gets a budget:

    budget = min(time left in the invocation, INFER_STORAGE_TIMEOUT_S)

and the SDKs' retry policies and timeouts come from it:

- Azure (``azure_retry_policy``): one attempt's connection and read timeouts are at most
  what is left of the budget (connect at most ``CONNECT_TIMEOUT_S``); retries back off
  from 0.2 s, doubling, and stop when the next attempt could not finish in the budget.
- AWS (``install_boto_deadline``): the client's connect timeout is ``CONNECT_TIMEOUT_S`` and
  its read timeout ``READ_TIMEOUT_S``; a retry is refused (the error raised as is) when
  the budget has no room for another attempt.

The invocation's deadline travels in a context variable: ``storage_deadline(seconds)``
around the invocation (the queue worker sets it from its ``Context``); ``run_blocking``
copies the context into its threads. Outside such a block the budget is
``INFER_STORAGE_TIMEOUT_S`` alone. No SDK is imported here.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import time
from collections.abc import Iterator
from typing import Any

from shared.lifecycle import Singleton

#: Default of ``INFER_STORAGE_TIMEOUT_S``: the longest one storage call may take, retries included.
DEFAULT_CALL_BUDGET_S = 10.0
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 20.0
#: Do not start another attempt with less than this left of the budget.
MIN_ATTEMPT_S = 0.25
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "storage_deadline", default=None
)


def _read_budget() -> float:
    raw = os.environ.get("INFER_STORAGE_TIMEOUT_S", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_CALL_BUDGET_S
    except ValueError:
        value = DEFAULT_CALL_BUDGET_S
    return value if value > 0 else DEFAULT_CALL_BUDGET_S


_budget = Singleton(_read_budget)


def call_budget_s() -> float:
    """``INFER_STORAGE_TIMEOUT_S`` (read once per process)."""
    return _budget.get()


@contextlib.contextmanager
def storage_deadline(seconds_left: float) -> Iterator[None]:
    """Storage calls made inside the block (and in ``run_blocking`` threads started from
    it) end within ``seconds_left`` seconds from now."""
    token = _deadline.set(time.monotonic() + max(0.0, seconds_left))
    try:
        yield
    finally:
        _deadline.reset(token)


def call_deadline(now: float | None = None) -> float:
    """Monotonic time by which a storage call starting now must be over."""
    now = time.monotonic() if now is None else now
    end = now + call_budget_s()
    invocation = _deadline.get()
    return end if invocation is None else min(end, invocation)


def backoff_s(retry: int) -> float:
    """Pause before retry number ``retry`` (0-based), with +-25% jitter."""
    base = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0**retry)
    return base * (0.75 + 0.5 * random.random())


def room_for_retry(deadline: float, pause_s: float) -> bool:
    return deadline - time.monotonic() >= pause_s + MIN_ATTEMPT_S


# -- Azure --------------------------------------------------------------------------------


def azure_retry_policy() -> Any:
    """A Storage retry policy bounded by the call's budget (azure-storage-* imported here)."""
    from azure.storage.blob import ExponentialRetry

    class DeadlineRetry(ExponentialRetry):
        def __init__(self) -> None:
            super().__init__(retry_total=5, initial_backoff=0, increment_base=2)

        def configure_retries(self, request: Any) -> dict[str, Any]:
            settings: dict[str, Any] = super().configure_retries(request)
            settings["deadline"] = call_deadline()
            settings["options"] = request.context.options
            settings["pause"] = 0.0
            _bound_attempt(settings)
            return settings

        def get_backoff_time(self, settings: dict[str, Any]) -> float:
            return float(settings.get("pause", 0.0))

        def increment(self, settings: dict[str, Any], request: Any, *args: Any, **kw: Any) -> bool:
            if not super().increment(settings, request, *args, **kw):
                return False
            pause = backoff_s(int(settings["count"]) - 1)
            if not room_for_retry(settings["deadline"], pause):
                return False
            settings["pause"] = pause
            _bound_attempt(settings, pause)
            return True

    return DeadlineRetry()


def _bound_attempt(settings: dict[str, Any], pause: float = 0.0) -> None:
    left = max(MIN_ATTEMPT_S, settings["deadline"] - time.monotonic() - pause)
    options = settings["options"]
    options["connection_timeout"] = min(CONNECT_TIMEOUT_S, left)
    options["read_timeout"] = min(READ_TIMEOUT_S, left)


# -- AWS ----------------------------------------------------------------------------------


def boto_config() -> Any:
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=32,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )


def install_boto_deadline(client: Any) -> Any:
    """Refuse botocore's retries that would run past the call's budget."""
    events = client.meta.events

    def start(context: dict[str, Any], **_: Any) -> None:
        context["storage_deadline"] = call_deadline()

    def bound(
        request_dict: dict[str, Any],
        response: Any = None,
        caught_exception: BaseException | None = None,
        operation: Any = None,
        attempts: int = 1,
        **_: Any,
    ) -> None:
        deadline = (request_dict.get("context") or {}).get("storage_deadline")
        # botocore's standard mode then sleeps up to 2 ** (attempts - 1) seconds
        pause = min(20.0, 2.0 ** max(0, attempts - 1))
        if deadline is None or room_for_retry(deadline, pause):
            return None  # botocore's own policy decides
        if caught_exception is not None:
            raise caught_exception
        if response is not None:
            http, parsed = response
            if int(getattr(http, "status_code", 200)) >= 500 or "Error" in (parsed or {}):
                from botocore.exceptions import ClientError

                raise ClientError(parsed, getattr(operation, "name", "storage call"))
        return None

    events.register_first("before-call", start)
    events.register_first("needs-retry", bound)
    return client
