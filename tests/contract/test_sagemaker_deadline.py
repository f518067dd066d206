"""SageMaker calls past the deadline give their pool thread back at the deadline.

boto3 is synchronous: the backend stops waiting at the deadline, but the thread stays in
the call until botocore's read timeout. Each call's read timeout is therefore bounded by
what remains, and a gate caps the calls running at once. gpusim's SageMaker protocol with a
20 s time to first token is the slow endpoint; the backend's own ``timeout_s`` is 60 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from shared.backends import sagemaker
from shared.backends.sagemaker import SageMakerBackend, SageMakerBackendConfig, read_timeout
from shared.context import Context
from shared.errors import InferenceError
from shared.lifecycle import reset_all
from shared.schemas import Operation
from tests.fixtures.devhost import wait_for
from tests.fixtures.gpusim import Gpusim

pytestmark = pytest.mark.usefixtures("cloud_env")
PAYLOAD = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def backend(url: str) -> SageMakerBackend:
    return SageMakerBackend(
        SageMakerBackendConfig(name="sm", kind="sagemaker", endpoint_name="llm-endpoint",
                               region="us-east-1", endpoint_url=url, timeout_s=60)
    )  # fmt: skip


def test_read_timeout_never_exceeds_what_remains() -> None:
    assert read_timeout(60, 120) == 60
    for remaining in (0.01, 0.2, 0.3, 0.99, 1.0, 7.3, 59.9, 200):
        t = read_timeout(60, remaining)
        assert 0 < t <= max(remaining, 0.05) and t <= 60
    assert read_timeout(60, 7.3) == 6  # a bucket: one client serves many deadlines


async def _burst(sm: SageMakerBackend, n: int, deadline_s: float) -> list[BaseException]:
    async def one() -> BaseException:
        try:
            await sm.invoke(Operation.CHAT, PAYLOAD, Context.with_timeout(deadline_s))
        except InferenceError as err:
            return err
        raise AssertionError("the slow endpoint answered before the deadline")

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_calls_past_the_deadline_hold_no_thread_after_it(
    gpusim_factory: Callable[..., Gpusim],
) -> None:
    slow = gpusim_factory(ttft_base_ms=20_000, hang_s=30)
    sm = backend(slow.url)
    errors = await _burst(sm, 12, deadline_s=1.0)
    assert all(e.status == 504 for e in errors), errors
    gate = sagemaker.gate()
    # Before: every thread stayed in its call for the endpoint's 20 s (timeout_s is 60 s).
    await asyncio.to_thread(wait_for, lambda: gate.running == 0, 5.0, 0.05)
    assert gate.peak == 12


async def test_calls_in_flight_are_capped(
    monkeypatch: pytest.MonkeyPatch, gpusim_factory: Callable[..., Gpusim]
) -> None:
    monkeypatch.setattr(sagemaker, "MAX_IN_FLIGHT", 3)
    reset_all()
    slow = gpusim_factory(ttft_base_ms=20_000, hang_s=30)
    errors = await _burst(backend(slow.url), 10, deadline_s=1.0)
    assert all(e.status == 504 for e in errors), errors
    gate = sagemaker.gate()
    assert gate.peak == 3  # the other seven waited without a thread, then timed out
    await asyncio.to_thread(wait_for, lambda: gate.running == 0, 5.0, 0.05)
