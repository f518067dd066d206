"""Backend capacity (shared/capacity.py) through the router: FIFO waiting without polling,
leases in a real Redis (renewed while held, freed and announced), the per-instance fallback
when Redis does not answer, and 429 at the deadline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis

from shared import state
from shared.capacity import Capacity
from shared.context import Context
from shared.errors import AtCapacity
from shared.router import Router
from shared.schemas import Operation
from tests.unit.test_router import FakeBackend

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class SlowBackend(FakeBackend):
    """Answers after ``hold`` (an event the test sets), recording the order it served."""

    def __init__(self, name: str, **cfg: Any) -> None:
        super().__init__(name, **cfg)
        self.hold = asyncio.Event()
        self.order: list[str] = []
        self.running = 0
        self.peak = 0

    async def send(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> bytes:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(ctx.request_id)
        try:
            await self.hold.wait()
        finally:
            self.running -= 1
        return json.dumps({"backend": self.name}).encode()


async def test_waiters_are_served_first_come_first_served_and_never_above_the_cap() -> None:
    backend = SlowBackend("gpu", max_concurrency=2)
    router = Router([backend], capacity=Capacity(shared=False))
    tasks = []
    for i in range(8):
        ctx = Context.with_timeout(10, request_id=f"r{i}")
        tasks.append(asyncio.create_task(router.invoke(Operation.CHAT, BODY, ctx)))
        await asyncio.sleep(0.01)  # arrival order
    assert backend.order == ["r0", "r1"]
    assert router.capacity.waiting("gpu") == 6
    backend.hold.set()
    await asyncio.gather(*tasks)
    assert backend.order == [f"r{i}" for i in range(8)]
    assert backend.peak == 2
    assert router.capacity.queues == {}


async def test_a_wait_ends_before_the_deadline_with_429_and_retry_after() -> None:
    backend = SlowBackend("gpu", max_concurrency=1)
    router = Router([backend], capacity=Capacity(shared=False))
    first = asyncio.create_task(router.invoke(Operation.CHAT, BODY, Context.with_timeout(10)))
    await asyncio.sleep(0.01)
    with pytest.raises(AtCapacity) as info:
        await router.invoke(Operation.CHAT, BODY, Context.with_timeout(0.8))
    assert info.value.status == 429 and info.value.headers()["Retry-After"] == "1"
    assert info.value.code == "capacity_exceeded"
    ctx = Context.with_timeout(5)
    ctx.prefer_async = True  # Prefer: respond-async: no wait at all
    with pytest.raises(AtCapacity):
        await router.invoke(Operation.CHAT, BODY, ctx)
    backend.hold.set()
    await first


async def test_a_full_primary_spills_to_the_next_priority() -> None:
    primary = SlowBackend("ptu", max_concurrency=1, priority=0)
    spill = FakeBackend("paygo", priority=1)
    router = Router([primary, spill], capacity=Capacity(shared=False))
    held = asyncio.create_task(router.invoke(Operation.CHAT, BODY, Context.with_timeout(5)))
    await asyncio.sleep(0.01)
    result = await router.invoke(Operation.CHAT, BODY, Context.with_timeout(5))
    assert result.backend == "paygo"
    primary.hold.set()
    await held


@pytest.fixture
def shared_state(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> str:
    monkeypatch.setenv("INFER_STATE_URL", redis_url)
    monkeypatch.setenv("INFER_STATE_TIMEOUT_S", "2")
    return redis_url


async def test_leases_live_in_redis_are_renewed_while_held_and_freed(shared_state: str) -> None:
    backend = SlowBackend("gpu", max_concurrency=3)
    router = Router([backend], capacity=Capacity(lease_s=1.0))
    store = redis.Redis.from_url(shared_state)
    key = "infer:cap:{gpu}"
    tasks = [
        asyncio.create_task(router.invoke(Operation.CHAT, BODY, Context.with_timeout(10)))
        for _ in range(2)
    ]
    await asyncio.sleep(0.1)
    members = store.zrange(key, 0, -1)
    assert len(members) == 2
    assert all(b":" in m and not m.startswith(b"r") for m in members)  # our ids, not callers'
    first = store.zscore(key, members[0])
    await asyncio.sleep(1.5)  # longer than the lease: renewed, not expired
    assert store.zcard(key) == 2
    assert store.zscore(key, members[0]) > first  # type: ignore[operator]
    backend.hold.set()
    await asyncio.gather(*tasks)
    assert store.zcard(key) == 0


async def test_slots_taken_elsewhere_count_and_their_release_wakes_the_waiter(
    shared_state: str,
) -> None:
    store = redis.Redis.from_url(shared_state)
    key = "infer:cap:{gpu}"
    # another instance holds the only slot
    store.zadd(key, {"other:1": 10**13})
    backend = FakeBackend("gpu", max_concurrency=1)
    router = Router([backend], capacity=Capacity(lease_s=30))
    task = asyncio.create_task(router.invoke(Operation.CHAT, BODY, Context.with_timeout(10)))
    await asyncio.sleep(0.3)
    assert not task.done() and backend.calls == 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    # the other instance frees it: the release script publishes the backend's name
    store.zrem(key, "other:1")
    store.publish("infer:cap:freed", "gpu")
    await task
    assert loop.time() - started < 0.5
    assert backend.calls == 1


async def test_redis_down_falls_back_to_the_per_instance_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFER_STATE_URL", "redis://127.0.0.1:1")  # nothing listens
    monkeypatch.setenv("INFER_STATE_TIMEOUT_S", "0.2")
    backend = SlowBackend("gpu", max_concurrency=2)
    router = Router([backend], capacity=Capacity())
    tasks = [
        asyncio.create_task(router.invoke(Operation.CHAT, BODY, Context.with_timeout(3)))
        for _ in range(4)
    ]
    await asyncio.sleep(0.5)
    assert backend.running == 2  # never unlimited
    assert state.failures["capacity"] >= 1
    backend.hold.set()
    await asyncio.gather(*tasks)
    assert backend.peak == 2
