"""Router: priority and weights, failover, concurrency slots, circuits with half-open probes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.backends.base import BaseBackend, ByteStream
from shared.backends.openai_compat import OpenAIBackendConfig
from shared.context import Context
from shared.errors import (
    BackendConnectionError,
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ContextTooLong,
    InferenceError,
    ModelNotFound,
)
from shared.router import Router
from shared.schemas import Operation


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeBackend(BaseBackend[OpenAIBackendConfig]):
    """A backend on the shared base whose transport answers (or fails) in-process."""

    def __init__(self, name: str, **cfg: Any) -> None:
        super().__init__(
            OpenAIBackendConfig(name=name, kind="openai", base_url="http://x/v1", **cfg)
        )
        self.calls = 0
        self.fail_with: list[InferenceError] = []

    async def send(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> bytes:
        self.calls += 1
        if self.fail_with:
            raise self.fail_with.pop(0)
        return json.dumps({"backend": self.name}).encode()

    async def send_stream(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> ByteStream:
        self.calls += 1
        if self.fail_with:
            raise self.fail_with.pop(0)
        return _Stream()


class _Stream:
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        return None


def ctx() -> Context:
    return Context.with_timeout(30)


PAYLOAD = {"model": "m"}


async def test_unknown_model_is_404() -> None:
    router = Router([FakeBackend("a", models=["other"])])
    with pytest.raises(ModelNotFound) as info:
        await router.invoke(Operation.CHAT, PAYLOAD, ctx())
    assert info.value.status == 404


async def test_lower_priority_first_then_failover_on_retryable_error() -> None:
    primary, secondary = FakeBackend("p", priority=0), FakeBackend("s", priority=1)
    router = Router([secondary, primary])
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "p"
    primary.fail_with = [BackendConnectionError("reset"), BackendConnectionError("reset")]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "s"
    assert primary.calls == 3  # the first call, then the failing one and its quick retry


class Sleeps:
    """An injected sleep that moves the fake clock instead of waiting."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds


def waiting_router(*backends: FakeBackend) -> tuple[Router, Sleeps]:
    clock = Clock()
    sleeps = Sleeps(clock)
    return Router(list(backends), clock=clock, sleep=sleeps, rand=lambda: 0.0), sleeps


async def test_a_lone_5xx_or_reset_is_retried_once_on_the_same_backend() -> None:
    primary, secondary = FakeBackend("p"), FakeBackend("s", priority=1)
    router, sleeps = waiting_router(primary, secondary)
    primary.fail_with = [BackendError("HTTP 500")]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "p"
    primary.fail_with = [BackendConnectionError("reset")]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "p"
    assert secondary.calls == 0 and primary.calls == 4
    assert sleeps.slept == [0.05, 0.05]


async def test_a_short_retry_after_is_waited_out_on_the_same_backend() -> None:
    primary, secondary = FakeBackend("p"), FakeBackend("s", priority=1)
    router, sleeps = waiting_router(primary, secondary)
    primary.fail_with = [BackendRateLimited("slow down", retry_after=2)]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "p"
    assert sleeps.slept == [2] and secondary.calls == 0
    # Longer than the backend's retry_after_wait_s (2 s): the next backend at once.
    primary.fail_with = [BackendRateLimited("slow down", retry_after=5)]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "s"
    # No Retry-After at all: nothing says when to come back, so on at once too.
    router, sleeps = waiting_router(FakeBackend("p2"), secondary)
    router.slots[0].backend.fail_with = [BackendRateLimited("slow down")]  # type: ignore[attr-defined]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "s"
    assert sleeps.slept == []


async def test_a_timeout_abandons_the_backend_for_the_rest_of_the_request() -> None:
    primary, secondary = FakeBackend("p"), FakeBackend("s", priority=1)
    router, sleeps = waiting_router(primary, secondary)
    primary.fail_with = [BackendTimeout("silent")]
    request = ctx()
    assert (await router.invoke(Operation.CHAT, PAYLOAD, request)).backend == "s"
    assert request.abandoned == {"p"} and sleeps.slept == []
    # The same request's next try does not go back to the silent one; another request does.
    assert (await router.invoke(Operation.CHAT, PAYLOAD, request)).backend == "s"
    assert primary.calls == 1
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "p"


async def test_context_length_moves_to_the_next_backend_not_the_same() -> None:
    small, large = FakeBackend("small"), FakeBackend("large", priority=1)
    router, sleeps = waiting_router(small, large)
    small.fail_with = [ContextTooLong("maximum context length is 2048 tokens")]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "large"
    assert small.calls == 1 and sleeps.slept == []
    small.fail_with = [ContextTooLong("too long")]
    large.fail_with = [ContextTooLong("too long")]
    with pytest.raises(ContextTooLong) as info:
        await router.invoke(Operation.CHAT, PAYLOAD, ctx())
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"


async def test_weights_split_traffic_within_a_priority_group() -> None:
    heavy, light = FakeBackend("heavy", weight=3), FakeBackend("light", weight=1)
    draws = iter([i / 100 for i in range(100)] * 2)
    router = Router([heavy, light], rand=lambda: next(draws))
    picks = [(await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend for _ in range(100)]
    assert picks.count("heavy") == 75


async def test_non_retryable_error_does_not_fail_over() -> None:
    primary, secondary = FakeBackend("p"), FakeBackend("s", priority=1)
    primary.fail_with = [BackendRejected("content filter", status=400)]
    router = Router([primary, secondary])
    with pytest.raises(BackendRejected):
        await router.invoke(Operation.CHAT, PAYLOAD, ctx())
    assert secondary.calls == 0


async def test_circuit_opens_for_retry_after_then_half_open_probe() -> None:
    clock = Clock()
    primary, secondary = FakeBackend("p"), FakeBackend("s", priority=1)
    router = Router([primary, secondary], clock=clock)
    primary.fail_with = [BackendRateLimited("slow down", retry_after=10)]
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "s"
    # While open, the primary is skipped without a call.
    clock.now = 5
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "s"
    assert primary.calls == 1
    # After Retry-After one probe goes to the primary; it succeeds and closes the circuit.
    clock.now = 10.5
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "p"
    assert router.slots[0].circuit.state(clock.now) == "closed"


async def test_failed_probe_reopens_the_circuit() -> None:
    clock = Clock()
    primary, secondary = FakeBackend("p"), FakeBackend("s", priority=1)
    router = Router([primary, secondary], clock=clock)
    primary.fail_with = [
        BackendUnavailable("down", retry_after=20),
        BackendUnavailable("down", retry_after=40),
    ]
    await router.invoke(Operation.CHAT, PAYLOAD, ctx())
    clock.now = 30
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "s"
    assert primary.calls == 2
    assert router.slots[0].circuit.state(clock.now) == "open"
    assert router.slots[0].circuit.open_until == 70


async def test_all_circuits_open_reports_when_to_come_back() -> None:
    clock = Clock()
    only = FakeBackend("p")
    router = Router([only], clock=clock)
    only.fail_with = [BackendRateLimited("busy", retry_after=30)]
    with pytest.raises(BackendRateLimited):
        await router.invoke(Operation.CHAT, PAYLOAD, ctx())
    clock.now = 10
    with pytest.raises(BackendUnavailable) as info:
        await router.invoke(Operation.CHAT, PAYLOAD, ctx())
    assert info.value.retry_after == pytest.approx(20)
    assert only.calls == 1


async def test_stream_holds_its_concurrency_slot_until_closed() -> None:
    backend = FakeBackend("p", max_concurrency=1)
    spill = FakeBackend("s", priority=1)
    router = Router([backend, spill])
    stream = await router.open_stream(Operation.CHAT, PAYLOAD, ctx())
    assert router.slots[0].in_flight == 1
    # The only slot is taken: the next request goes to the next backend.
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "s"
    async for _ in stream:
        pass
    assert router.slots[0].in_flight == 0
    assert (await router.invoke(Operation.CHAT, PAYLOAD, ctx())).backend == "p"


async def test_when_every_backend_timed_out_the_error_stays_retryable_but_not_here() -> None:
    """A job's next delivery may try again (retryable); this invocation does not loop."""
    only = FakeBackend("p")
    router, _ = waiting_router(only)
    only.fail_with = [BackendTimeout("silent")]
    request = ctx()
    with pytest.raises(BackendTimeout) as info:
        await router.invoke(Operation.CHAT, PAYLOAD, request)
    assert info.value.retryable and not info.value.retry_here
    with pytest.raises(BackendTimeout) as again:
        await router.invoke(Operation.CHAT, PAYLOAD, request)
    assert again.value.retryable and not again.value.retry_here and only.calls == 1
