"""Adaptive concurrency: slow start, additive growth, 429/503 back-off, Retry-After, bounds."""

from __future__ import annotations

import pytest

from shared.batch.limiter import AdaptiveLimiter
from shared.errors import BackendError, BackendRateLimited, BackendUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fill(lim: AdaptiveLimiter) -> int:
    n = 0
    while lim.try_acquire():
        n += 1
    return n


def test_slow_start_doubles_per_round_trip_until_the_ceiling() -> None:
    lim = AdaptiveLimiter(start=4, ceiling=64, clock=Clock())
    for expected in (4, 8, 16, 32, 64, 64):
        got = fill(lim)
        assert got == expected
        for _ in range(got):
            lim.on_success(0.1, tokens=10)
    assert lim.limit == 64


def test_rate_limit_cuts_once_per_round_trip_and_holds_for_retry_after() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(start=40, ceiling=64, backoff=0.5, clock=clock)
    fill(lim)
    lim.on_success(0.2)  # one round trip is ~0.2 s
    for _ in range(10):  # ten requests in flight all see the same overload
        lim.on_error(BackendRateLimited("full", retry_after=2.0))
    assert lim.limit == pytest.approx(20.5)
    assert not lim.slow_start
    for _ in range(lim.in_flight):
        lim.on_abandon()
    assert not lim.try_acquire(), "no new start before Retry-After has passed"
    clock.now += 2.0
    assert lim.try_acquire()
    clock.now += 0.3  # a new round trip: a new overload cuts again
    lim.on_error(BackendUnavailable("busy", retry_after=None))
    assert lim.limit == pytest.approx(20.5 * 0.5)


def test_additive_increase_after_congestion_adds_about_one_slot_per_round_trip() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(start=10, ceiling=64, backoff=0.5, clock=clock)
    lim.try_acquire()
    lim.on_error(BackendRateLimited("full"))
    assert lim.limit == 5
    for _ in range(5):  # one round trip of successes at limit 5
        lim.try_acquire()
        lim.on_success(0.1)
    assert 5.9 < lim.limit < 6.1


def test_other_errors_do_not_shrink_the_limit() -> None:
    lim = AdaptiveLimiter(start=8, ceiling=64, clock=Clock())
    lim.try_acquire()
    lim.on_error(BackendError("boom"))
    assert lim.limit == 8 and lim.in_flight == 0


def test_limit_stays_within_floor_and_ceiling() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(start=100, ceiling=6, floor=2, backoff=0.1, clock=clock)
    assert lim.limit == 6
    for _ in range(5):
        clock.now += 10
        lim.try_acquire()
        lim.on_error(BackendRateLimited("full"))
    assert lim.limit == 2


def test_growth_holds_while_per_token_latency_is_high() -> None:
    lim = AdaptiveLimiter(start=8, ceiling=64, tolerance=2.0, clock=Clock())
    lim.try_acquire()
    lim.on_success(1.0, tokens=100)  # best: 10 ms per token
    before = lim.limit
    for _ in range(50):  # queueing in the endpoint: 5x slower per token
        lim.try_acquire()
        lim.on_success(5.0, tokens=100)
    assert not lim.latency_ok()
    assert lim.limit <= before + 8  # grew only until the EWMA crossed the tolerance
    held = lim.limit
    lim.try_acquire()
    lim.on_success(5.0, tokens=100)
    assert lim.limit == held


async def test_acquire_waits_for_a_free_slot_and_gives_up_at_until() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(start=1, ceiling=1, clock=clock)
    assert await lim.acquire()
    clock.now += 5
    assert not await lim.acquire(until=clock.now - 1)
    lim.on_abandon()
    assert await lim.acquire(until=clock.now + 1)
