"""Retry policy: openai-python's rules, and never a wait past the invocation deadline."""

from __future__ import annotations

import email.utils

import pytest

from shared.context import Context
from shared.errors import BackendRateLimited, BackendRejected, BackendUnavailable, DeadlineExceeded
from shared.retry import (
    backoff_delay,
    call_with_retry,
    retry_delay,
    retry_share,
    server_delay,
    should_retry,
    unit_budget,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (500, {}, True),
        (503, {}, True),
        (None, {}, True),
        (400, {}, False),
        (404, {}, False),
        (400, {"x-should-retry": "true"}, True),
        (503, {"x-should-retry": "false"}, False),
    ],
)
def test_should_retry_follows_openai_rules(
    status: int | None, headers: dict[str, str], expected: bool
) -> None:
    assert should_retry(status, headers) is expected


def test_server_delay_prefers_retry_after_ms_then_seconds_then_http_date() -> None:
    assert server_delay({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert server_delay({"x-ms-retry-after-ms": "1500"}) == 1.5
    assert server_delay({"retry-after": "2.5"}) == 2.5
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert server_delay({"retry-after": date}, now=1_000_000) == pytest.approx(30)
    assert server_delay({"retry-after": "soon"}) is None
    assert server_delay({}) is None


def test_backoff_is_capped_exponential_with_jitter() -> None:
    assert backoff_delay(0, 0.0) == 0.5
    assert backoff_delay(1, 0.0) == 1.0
    assert backoff_delay(10, 0.0) == 8.0
    assert backoff_delay(1, 0.999) == pytest.approx(1.0 * (1 - 0.25 * 0.999))


def test_retry_delay_honours_server_delay_up_to_120s() -> None:
    assert retry_delay(3.0, 0, 0.0) == 3.0
    assert retry_delay(120.0, 0, 0.0) == 120.0
    assert retry_delay(121.0, 0, 0.0) is None
    assert retry_delay(0.0, 0, 0.0) == 0.5
    assert retry_delay(None, 2, 0.0) == 2.0


async def test_retries_until_success_with_server_delays() -> None:
    clock = FakeClock()
    ctx = Context(deadline=clock() + 60, clock=clock)
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if n < 2:
            raise BackendRateLimited("busy", retry_after=1.5)
        return "ok"

    result = await call_with_retry(attempt, ctx, max_retries=3, sleep=clock.sleep, rand=lambda: 0)
    assert result == "ok"
    assert calls == [0, 1, 2]
    assert clock.sleeps == [1.5, 1.5]


async def test_never_waits_past_the_deadline() -> None:
    clock = FakeClock()
    ctx = Context(deadline=clock() + 5, clock=clock)

    async def attempt(n: int) -> str:
        clock.now += 0.5  # each attempt takes time
        raise BackendUnavailable("down", retry_after=3.0)

    with pytest.raises(BackendUnavailable) as info:
        await call_with_retry(attempt, ctx, max_retries=10, sleep=clock.sleep, rand=lambda: 0)
    assert info.value.retry_after == 3.0  # the caller can still tell its client when to retry
    assert clock.now <= ctx.deadline
    assert clock.sleeps == [3.0]


async def test_non_retryable_errors_are_raised_at_once() -> None:
    clock = FakeClock()
    ctx = Context(deadline=clock() + 60, clock=clock)
    calls = 0

    async def attempt(n: int) -> str:
        nonlocal calls
        calls += 1
        raise BackendRejected("content filtered", status=400)

    with pytest.raises(BackendRejected):
        await call_with_retry(attempt, ctx, max_retries=5, sleep=clock.sleep)
    assert calls == 1


async def test_expired_deadline_raises_before_calling() -> None:
    clock = FakeClock()
    ctx = Context(deadline=clock() - 1, clock=clock)

    async def attempt(n: int) -> str:
        raise AssertionError("must not be called")

    with pytest.raises(DeadlineExceeded):
        await call_with_retry(attempt, ctx, max_retries=2, sleep=clock.sleep)


@pytest.mark.parametrize(
    ("max_retries", "tries_left", "calls_made", "left_after", "sleeps"),
    [
        (2, None, 3, None, [0.5, 1.0]),  # no outer layer: max_retries alone bounds the tries
        (5, 2, 2, 0, [0.5]),  # the unit of work's tries left bound it below max_retries
        (1, 4, 2, 2, [0.5]),  # and max_retries still bounds the service's share
    ],
)
async def test_max_retries_and_the_units_tries_left_bound_attempts(
    max_retries: int,
    tries_left: int | None,
    calls_made: int,
    left_after: int | None,
    sleeps: list[float],
) -> None:
    clock = FakeClock()
    ctx = Context(deadline=clock() + 600, clock=clock, tries_left=tries_left)
    calls = 0

    async def attempt(n: int) -> str:
        nonlocal calls
        calls += 1
        raise BackendUnavailable("down")

    with pytest.raises(BackendUnavailable):
        await call_with_retry(
            attempt, ctx, max_retries=max_retries, sleep=clock.sleep, rand=lambda: 0
        )
    assert calls == calls_made
    assert ctx.tries_left == left_after
    assert clock.sleeps == sleeps


async def test_each_try_draws_one_success_included() -> None:
    clock = FakeClock()
    ctx = Context(deadline=clock() + 600, clock=clock, tries_left=3)

    async def attempt(n: int) -> str:
        if n == 0:
            raise BackendUnavailable("down")
        return "ok"

    assert await call_with_retry(attempt, ctx, max_retries=5, sleep=clock.sleep) == "ok"
    assert ctx.tries_left == 1  # what the outer layer gives back to the unit's budget


def test_budgets_add_the_layers_retries() -> None:
    assert unit_budget(2, 3) == 6  # a batch line: 1 + INFER_MAX_RETRIES + line retries
    assert unit_budget(2, 4 + 20) == 27  # a job: + (deliveries - 1) + deferrals
    assert unit_budget(0, 0) == 1


def test_the_first_try_gets_the_service_retries_and_each_later_one_one_try() -> None:
    left, later, shares = unit_budget(2, 3), 3, []
    while left > 0:
        share = retry_share(left, 2, later)
        shares.append(share)
        left, later = left - share, later - 1
    assert shares == [3, 1, 1, 1]
    assert retry_share(0, 2, 0) == 0
    assert retry_share(1, 2, 5) == 1  # at least one while anything is left
    assert retry_share(6, 2, 0) == 3  # never more than the service's own 1 + max_retries
