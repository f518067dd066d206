"""The limiter with both providers: in-process, and a real Redis (the same Lua-free rules)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.context import Context
from shared.lifecycle import reset_all
from shared.limits import CallerQuotaExceeded, CallerRateLimited, Limiter, format_duration
from shared.limits.base import estimate_prompt_tokens, period_bounds
from shared.limits.config import LimitRule
from shared.limits.memory import MemoryProvider
from shared.limits.redis_provider import RedisProvider


def test_durations_use_openai_format() -> None:
    assert format_duration(12) == "12ms"
    assert format_duration(1000) == "1s"
    assert format_duration(1500) == "1.5s"
    assert format_duration(90_000) == "1m30s"
    assert format_duration(360_000) == "6m0s"
    assert format_duration(3_600_000) == "1h0m0s"


def test_quota_periods_end_at_utc_calendar_bounds() -> None:
    t = 1_767_225_600.0 - 90  # 2025-12-31T23:58:30Z
    assert period_bounds("hour", t) == ("20251231T23", 90.0)
    assert period_bounds("day", t) == ("20251231", 90.0)
    assert period_bounds("month", t) == ("202512", 90.0)


def _payload(chars: int = 36) -> dict[str, Any]:
    # 36 chars -> 9 tokens + 4 per message overhead = 13
    return {"model": "m", "messages": [{"role": "user", "content": "x" * chars}]}


@pytest.fixture(params=["memory", "redis"])
def provider(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryProvider()
    else:
        request.getfixturevalue("state_env")
        yield RedisProvider()


def _limiter(provider: Any, *rules: dict[str, Any]) -> Limiter:
    import time

    return Limiter([LimitRule(**r) for r in rules], provider, clock=time.time)


def _ctx(rid: str) -> Context:
    ctx = Context.with_timeout(30)
    ctx.request_id = rid
    return ctx


def test_tpm_admits_up_to_the_limit_then_refuses_with_exact_retry(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "tpm": 130})
    assert estimate_prompt_tokens(_payload()) == 13

    async def main() -> None:
        admitted = []
        for i in range(10):
            a = await lim.admit("team-a", "m", _payload(), _ctx(f"r{i}"))
            admitted.append(a)
        assert admitted[0].headers["x-ratelimit-limit-tokens"] == "130"
        assert int(admitted[-1].headers["x-ratelimit-remaining-tokens"]) <= 1
        with pytest.raises(CallerRateLimited) as refused:
            await lim.admit("team-a", "m", _payload(), _ctx("r10"))
        err = refused.value
        # 13 tokens refill at 130/60s: 6 s (less the little time the test took)
        assert 5000 <= err.retry_ms <= 6000
        headers = err.headers()
        assert headers["Retry-After"] == "6"
        assert headers["x-ratelimit-limit-tokens"] == "130"
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        assert err.status == 429 and err.code == "rate_limit_exceeded"
        # another caller has its own bucket under a "*" rule
        await lim.admit("team-b", "m", _payload(), _ctx("b0"))

    asyncio.run(main())


def test_real_usage_is_charged_after_the_call(provider: Any) -> None:
    # a day-long window: refill is too slow to blur exact counts
    lim = _limiter(provider, {"caller": "*", "tpm": 1000, "window_s": 86400})

    async def main() -> None:
        a = await lim.admit("c", "m", _payload(), _ctx("r1"))
        assert a.headers["x-ratelimit-remaining-tokens"] == "987"
        await a.settle(513)  # the answer used 500 more tokens than estimated
        b = await lim.admit("c", "m", _payload(), _ctx("r2"))
        assert b.headers["x-ratelimit-remaining-tokens"] == "474"
        await b.settle(0)  # refunded (a failed call, a cache hit)
        c = await lim.admit("c", "m", _payload(), _ctx("r3"))
        assert c.headers["x-ratelimit-remaining-tokens"] == "474"

    asyncio.run(main())


def test_rpm_and_named_caller_rules_take_precedence(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "rpm": 1}, {"caller": "vip", "rpm": 3})

    async def main() -> None:
        for i in range(3):
            a = await lim.admit("vip", "m", _payload(), _ctx(f"v{i}"))
        assert a.headers["x-ratelimit-limit-requests"] == "3"
        with pytest.raises(CallerRateLimited):
            await lim.admit("vip", "m", _payload(), _ctx("v3"))
        await lim.admit("other", "m", _payload(), _ctx("o0"))
        with pytest.raises(CallerRateLimited) as refused:
            await lim.admit("other", "m", _payload(), _ctx("o1"))
        assert refused.value.headers()["Retry-After"] == "60"

    asyncio.run(main())


def test_per_model_counters(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "model": "*", "rpm": 1})

    async def main() -> None:
        await lim.admit("c", "m1", _payload(), _ctx("a"))
        await lim.admit("c", "m2", _payload(), _ctx("b"))
        with pytest.raises(CallerRateLimited):
            await lim.admit("c", "m1", _payload(), _ctx("c"))

    asyncio.run(main())


def test_max_parallel_is_released_when_the_request_ends(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "max_parallel": 2})

    async def main() -> None:
        a = await lim.admit("c", "m", _payload(), _ctx("a"))
        b = await lim.admit("c", "m", _payload(), _ctx("b"))
        with pytest.raises(CallerRateLimited) as refused:
            await lim.admit("c", "m", _payload(), _ctx("c"))
        assert "in flight" in refused.value.message
        await a.settle(20)
        await a.settle(20)  # once only
        c = await lim.admit("c", "m", _payload(), _ctx("c"))
        await b.settle(None)
        await c.settle(None)
        for rid in ("d", "e"):
            await lim.admit("c", "m", _payload(), _ctx(rid))

    asyncio.run(main())


def test_token_quota_refuses_until_the_period_ends(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "token_quota": 30, "quota_period": "day", "rpm": 100})

    async def main() -> None:
        a = await lim.admit("c", "m", _payload(), _ctx("a"))
        await a.settle(25)
        with pytest.raises(CallerQuotaExceeded) as refused:
            await lim.admit("c", "m", _payload(), _ctx("b"))
        err = refused.value
        assert err.status == 429 and err.code == "insufficient_quota"
        assert "You exceeded your token quota of 30 for this period; it resets in" in str(err)
        _, left = period_bounds("day", __import__("time").time())
        assert abs(err.retry_ms / 1000 - left) < 5
        # the refused request charged nothing: the rpm counter has 99 left
        b = await lim.admit("d", "m", _payload(), _ctx("c"))
        assert b.headers["x-ratelimit-remaining-requests"] == "99"

    asyncio.run(main())


def test_a_spent_budget_refuses_in_money(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "cost_quota": 2, "quota_period": "month"})

    async def main() -> None:
        a = await lim.admit("c", "m", _payload(), _ctx("a"), cost=1_500_000)  # 1.5 of 2
        await a.settle(0, cost=1_500_000)
        with pytest.raises(CallerQuotaExceeded) as refused:
            await lim.admit("c", "m", _payload(), _ctx("b"), cost=1_000_000)
        err = refused.value
        assert err.status == 429 and err.code == "insufficient_quota"
        assert "You exceeded your budget of 2 for this period; it resets in" in str(err)

    asyncio.run(main())


def test_concurrent_admissions_never_exceed_the_limit(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "rpm": 20})

    async def one(i: int) -> bool:
        try:
            await lim.admit("c", "m", _payload(), _ctx(f"r{i}"))
        except CallerRateLimited:
            return False
        return True

    async def main() -> int:
        return sum(await asyncio.gather(*(one(i) for i in range(60))))

    assert asyncio.run(main()) == 20


def test_redis_down_falls_back_to_this_instances_counters(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shared import state
    from tests.fixtures.procs import free_port

    monkeypatch.setenv("INFER_STATE_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_all()
    lim = _limiter(RedisProvider(), {"caller": "*", "rpm": 1})

    async def main() -> None:
        a = await lim.admit("c", "m", _payload(), _ctx("r0"))
        assert a.headers["x-ratelimit-limit-requests"] == "1"  # counted here
        await a.settle(10)
        with pytest.raises(CallerRateLimited):  # never "unlimited for everyone"
            await lim.admit("c", "m", _payload(), _ctx("r1"))

    with caplog.at_level("WARNING", logger="shared.state"):
        asyncio.run(main())
    assert lim.failed_open >= 1
    assert state.failures["limits"] >= 1
    assert "fall back to this instance" in caplog.text
    reset_all()


def test_redis_down_fails_open_when_told_to(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from tests.fixtures.procs import free_port

    monkeypatch.setenv("INFER_STATE_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_all()
    lim = Limiter([LimitRule(caller="*", rpm=1)], RedisProvider(), clock=time.time,
                  on_state_down="open")  # fmt: skip

    async def main() -> None:
        for i in range(3):
            a = await lim.admit("c", "m", _payload(), _ctx(f"r{i}"))
            assert a.headers == {}
            await a.settle(10)

    asyncio.run(main())
    assert lim.failed_open == 3
    reset_all()


def test_a_slot_redis_could_not_free_is_freed_once_it_answers(state_env: str) -> None:
    import redis as redis_lib

    from shared import state

    lim = _limiter(RedisProvider(), {"caller": "*", "max_parallel": 1})

    async def main() -> None:
        a = await lim.admit("c", "m", _payload(), _ctx("a"))
        state.state().down_until["limits"] = time.monotonic() + 60  # Redis "down"
        await a.settle(None)  # not taken: kept
        assert len(lim._unsettled) == 1
        state.state().down_until.clear()  # back
        held = redis_lib.Redis.from_url(state_env)
        assert sum(held.zcard(k) for k in held.scan_iter("*par*")) == 1
        b = await lim.admit("d", "m", _payload(), _ctx("b"))  # any admission flushes it
        await b.settle(None)
        assert lim._unsettled == []
        assert sum(held.zcard(k) for k in held.scan_iter("*par*")) == 0

    asyncio.run(main())


async def test_a_reset_is_not_rounded_up_by_clock_float_noise() -> None:
    # (now + d) - now is d plus ~1e-9 ms at this clock reading: the reset must stay d
    from shared.limits.base import Check
    from shared.limits.memory import MemoryProvider

    provider = MemoryProvider(clock=lambda: 17000.00037)
    check = Check("rate", "k", limit=5, span_ms=86_400_000, cost=1, metric="requests")
    decision = await provider.acquire([check], "r1", Context.with_timeout(5))
    assert decision.reset_ms == [17_280_000]


def test_admission_reserves_the_worst_case_and_settles_to_the_usage(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "tpm": 1000, "window_s": 86400})

    async def main() -> None:
        ask = {**_payload(), "max_tokens": 200, "n": 2}
        a = await lim.admit("c", "m", ask, _ctx("r1"))
        assert a.headers["x-ratelimit-remaining-tokens"] == str(1000 - 13 - 2 * 200)
        await a.settle(113)  # what it really used
        b = await lim.admit("c", "m", _payload(), _ctx("r2"), cap=300)  # no max_tokens: cap
        assert b.headers["x-ratelimit-remaining-tokens"] == str(1000 - 113 - 13 - 300)
        await b.settle(None)  # no usage reported: the reservation stands
        c = await lim.admit("c", "m", _payload(), _ctx("r3"))
        assert c.headers["x-ratelimit-remaining-tokens"] == str(1000 - 113 - 313 - 13)

    asyncio.run(main())


def test_one_caller_request_id_gets_one_slot_per_request(provider: Any) -> None:
    lim = _limiter(provider, {"caller": "*", "max_parallel": 2})

    async def main() -> None:
        await lim.admit("c", "m", _payload(), _ctx("same"))
        await lim.admit("c", "m", _payload(), _ctx("same"))
        with pytest.raises(CallerRateLimited):  # the third with that id is one too many
            await lim.admit("c", "m", _payload(), _ctx("same"))

    asyncio.run(main())


def test_a_rule_naming_a_key_id_governs_only_that_key() -> None:
    lim = _limiter(MemoryProvider(), {"caller": "team-a", "rpm": 1}, {"caller": "*", "rpm": 5})

    async def main() -> None:
        await lim.admit("key:team-a", "m", _payload(), _ctx("a"))
        with pytest.raises(CallerRateLimited):  # the unprefixed rule names the key caller
            await lim.admit("key:team-a", "m", _payload(), _ctx("b"))
        # a token whose subject is "team-a" is another caller, under the "*" rule
        for i in range(3):
            await lim.admit("jwt:https://issuer.example:team-a", "m", _payload(), _ctx(f"j{i}"))

    asyncio.run(main())
