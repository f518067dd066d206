"""Choose a backend for a model: priority groups, weights, failover, concurrency, circuits.

- Candidates are the backends whose ``models`` include the requested model (or ``"*"``);
  none means ``ModelNotFound`` (404).
- Lower ``priority`` is tried first (e.g. provisioned throughput before pay-as-you-go);
  within a priority group the order is a weighted random draw by ``weight``.
- A retryable failure (429, 503, 5xx, timeout, connection) fails over to the next candidate
  at once; when every candidate failed, the last error goes to the retry policy.
- ``max_concurrency`` caps requests in flight per backend (a stream holds its slot until it
  ends); when every candidate is full the call waits for a slot until the deadline.
- A circuit per backend opens for the endpoint's Retry-After on 429/503 (or after
  ``failure_threshold`` consecutive failures, for ``open_s``); once that time has passed one
  request is let through as a half-open probe: success closes the circuit, failure reopens it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared import telemetry
from shared.backends.base import Backend, ByteStream, Result
from shared.context import Context
from shared.errors import (
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
    InferenceError,
    ModelNotFound,
)
from shared.schemas import Operation

T = TypeVar("T")
Clock = Callable[[], float]

DEFAULT_OPEN_S = 5.0
RATE_LIMIT_OPEN_S = 1.0
FAILURE_THRESHOLD = 3
SLOT_POLL_S = 0.005


@dataclass
class Circuit:
    open_until: float = 0.0
    failures: int = 0
    probing: bool = False
    name: str = ""  # the backend's, for telemetry

    def state(self, now: float) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def admits(self, now: float) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half_open" and not self.probing)

    def record_success(self) -> None:
        if self.open_until:
            telemetry.record_circuit(self.name, "closed")
        self.open_until = 0.0
        self.failures = 0
        self.probing = False

    def trip(self, now: float, hold_s: float) -> None:
        """Open now for ``hold_s`` (a failed health probe), whatever the failure count."""
        self.probing = False
        self.failures += 1
        was_open = self.state(now) == "open"
        self.open_until = max(self.open_until, now + max(hold_s, 0.001))
        if not was_open:
            telemetry.record_circuit(self.name, "open")

    def record_failure(self, err: InferenceError, now: float) -> None:
        self.probing = False
        self.failures += 1
        was = self.open_until
        if isinstance(err, BackendRateLimited | BackendUnavailable):
            hold = err.retry_after if err.retry_after and err.retry_after > 0 else RATE_LIMIT_OPEN_S
            self.open_until = now + min(hold, 120.0)
        elif self.failures >= FAILURE_THRESHOLD or self.open_until:
            self.open_until = now + DEFAULT_OPEN_S
        if self.open_until != was:
            telemetry.record_circuit(self.name, "open")


@dataclass
class Slot:
    backend: Backend
    circuit: Circuit = field(default_factory=Circuit)
    in_flight: int = 0

    @property
    def full(self) -> bool:
        return self.in_flight >= self.backend.config.max_concurrency

    def __post_init__(self) -> None:
        self.circuit.name = self.backend.name


class _SlotStream:
    """Holds the backend's concurrency slot until the stream is exhausted or closed.

    A retryable failure after the stream opened counts against the backend's circuit too.
    """

    def __init__(
        self,
        inner: ByteStream,
        release: Callable[[], None],
        on_failure: Callable[[InferenceError], None],
        backend: str = "",
    ) -> None:
        self.backend = backend
        self._inner = inner
        self._release: Callable[[], None] | None = release
        self._on_failure = on_failure

    def _done(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except InferenceError as err:
            if err.retryable:
                self._on_failure(err)
            raise
        finally:
            self._done()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._done()


class Router:
    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        clock: Clock = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.slots = [Slot(b) for b in backends]
        self._clock = clock
        self._rand = rand

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def backends(self) -> list[Backend]:
        return [s.backend for s in self.slots]

    def plan(self, model: str) -> list[Slot]:
        """Candidates for ``model`` in the order they will be tried."""
        serving = [s for s in self.slots if s.backend.config.serves(model)]
        if not serving:
            raise ModelNotFound(
                f"The model '{model}' does not exist or is not served here", param="model"
            )
        ordered: list[Slot] = []
        for prio in sorted({s.backend.config.priority for s in serving}):
            group = [s for s in serving if s.backend.config.priority == prio]
            while len(group) > 1:
                total = sum(s.backend.config.weight for s in group)
                pick = self._rand() * total
                for i, s in enumerate(group):
                    pick -= s.backend.config.weight
                    if pick < 0 or i == len(group) - 1:
                        ordered.append(group.pop(i))
                        break
            ordered.extend(group)
        return ordered

    async def invoke(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        async def call(slot: Slot) -> Result:
            try:
                return await slot.backend.invoke(op, payload, ctx)
            finally:
                slot.in_flight -= 1

        return await self._route(str(payload.get("model", "")), call, ctx)

    async def open_stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ByteStream:
        async def call(slot: Slot) -> ByteStream:
            try:
                inner = await slot.backend.open_stream(op, payload, ctx)
            except BaseException:
                slot.in_flight -= 1
                raise

            def release() -> None:
                slot.in_flight -= 1

            def failed(err: InferenceError) -> None:
                slot.circuit.record_failure(err, self._clock())

            return _SlotStream(inner, release, failed, slot.backend.name)

        return await self._route(str(payload.get("model", "")), call, ctx)

    async def _route(self, model: str, call: Callable[[Slot], Awaitable[T]], ctx: Context) -> T:
        """Try candidates in order; ``call`` owns releasing the slot it was given."""
        plan = self.plan(model)
        failed: Slot | None = None
        while True:
            now = self._clock()
            last_err: InferenceError | None = None
            reopen_at: float | None = None
            waiting_for_slot = False
            for slot in plan:
                if not slot.circuit.admits(now):
                    if slot.circuit.open_until > now:
                        soon = slot.circuit.open_until
                        reopen_at = soon if reopen_at is None else min(reopen_at, soon)
                    continue
                if slot.full:
                    waiting_for_slot = True
                    continue
                if slot.circuit.state(now) == "half_open":
                    slot.circuit.probing = True
                    telemetry.record_circuit(slot.backend.name, "half_open")
                if failed is not None:
                    telemetry.record_failover(ctx, failed.backend.name, slot.backend.name)
                slot.in_flight += 1
                tried = telemetry.attempt(ctx, slot.backend)
                try:
                    result = await call(slot)
                except InferenceError as err:
                    tried.end(err)
                    if not err.retryable:
                        if isinstance(err, BackendError):
                            slot.circuit.record_success()  # it answered; the request was bad
                        else:
                            slot.circuit.probing = False
                        raise
                    slot.circuit.record_failure(err, self._clock())
                    last_err = err
                    failed = slot
                    continue
                except BaseException as exc:
                    tried.end(exc)
                    slot.circuit.probing = False
                    raise
                tried.end()
                slot.circuit.record_success()
                return result
            if last_err is not None:
                raise last_err
            if waiting_for_slot:
                ctx.check()
                await asyncio.sleep(SLOT_POLL_S)
                continue
            wait = (reopen_at - now) if reopen_at is not None else DEFAULT_OPEN_S
            raise BackendUnavailable(
                f"every backend serving '{model}' is cooling down after failures",
                retry_after=max(wait, 0.001),
            )
