"""Choose a backend for a model: priority groups, weights, failover, concurrency, circuits.

- Candidates are the backends whose ``models`` include the requested model (or ``"*"``);
  none means ``ModelNotFound`` (404).
- Lower ``priority`` is tried first (e.g. provisioned throughput before pay-as-you-go);
  within a priority group the order is a weighted random draw by ``weight``.
- A retryable failure (429, 503, 5xx, timeout, connection) is tried once more on the same
  backend when that is the better bet (a Retry-After within ``retry_after_wait_s``, waited
  out; a lone 5xx or reset, after a short pause; either is drawn from the unit of work's
  retry budget like any try), else fails over to the next candidate; a timeout abandons
  the backend for the rest of the request. ``context_length_exceeded``
  moves to the next candidate (a larger context may fit). When every candidate failed, the
  last error goes to the retry policy.
- ``max_concurrency`` caps requests in flight per backend (a stream holds its slot until it
  ends), across every instance when shared state is configured (``shared.capacity``); a
  full backend is passed over for the next candidate that has room (the next priority
  group included). When every candidate is full the request queues (first come, first
  served) until a slot is freed; at the deadline it gets 429 ``capacity_exceeded`` with
  Retry-After, and a caller that sent ``Prefer: respond-async`` gets it at once (the HTTP
  layer then answers 202 with a job).
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
from typing import TYPE_CHECKING, Any, TypeVar

from shared import telemetry
from shared.backends.base import SSE_DONE, Backend, ByteStream, Result
from shared.capacity import Capacity, Gate, Lease, Waiter
from shared.context import Context
from shared.errors import (
    AtCapacity,
    BackendConnectionError,
    BackendError,
    BackendRateLimited,
    BackendTimeout,
    BackendUnavailable,
    BackendWarming,
    ContextTooLong,
    InferenceError,
    ModelNotFound,
)
from shared.lines import total_tokens, usage_from_tail
from shared.quota import headroom as quota_headroom
from shared.schemas import Operation
from shared.telemetry import record_retry

if TYPE_CHECKING:
    from shared.pricing import Price
    from shared.quota import BackendQuota

T = TypeVar("T")
Clock = Callable[[], float]

DEFAULT_OPEN_S = 5.0
RATE_LIMIT_OPEN_S = 1.0
FAILURE_THRESHOLD = 3
#: The pause (times 1 to 2, jittered) before the one quick retry of a lone 5xx or reset.
QUICK_RETRY_S = 0.05
#: Do not wait for a retry that would leave less than this for the attempt.
MIN_ATTEMPT_S = 0.05


@dataclass
class Circuit:
    open_until: float = 0.0
    failures: int = 0
    probing: bool = False
    name: str = ""  # the backend's, for telemetry
    #: Opened by a "no capacity yet" answer: the endpoint is scaling out, not failing.
    warming: bool = False

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
        self.warming = False

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
        self.warming = isinstance(err, BackendWarming)
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
    gate: Gate
    circuit: Circuit = field(default_factory=Circuit)
    #: The provider's own tpm / rpm (``shared.quota``), when the entry declares them.
    quota: BackendQuota | None = None

    @property
    def in_flight(self) -> int:
        """Requests this instance has in flight toward the backend."""
        return self.gate.in_flight

    def __post_init__(self) -> None:
        self.circuit.name = self.backend.name


def malformed(block: bytes) -> bool:
    """Whether a block of whole SSE events holds one that is not well formed: a ``data``
    line that is neither ``[DONE]`` nor a JSON object's braces (a cut event, an HTML page,
    plain text). Comments and other SSE fields pass. A shape check, not a parse: the pass
    through reads no JSON on the way (docs/backends.md says what this does not catch)."""
    for event in block.split(b"\n\n"):
        for line in event.split(b"\n") if b"\n" in event else (event,):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data != b"[DONE]" and (data[:1] != b"{" or data[-1:] != b"}"):
                    return True
    return False


def _finished(block: bytes) -> bool:
    return b'"finish_reason":"' in block or b'"finish_reason": "' in block


#: An event longer than this without its blank line is not an SSE stream.
MAX_EVENT_BYTES = 1 << 20


class _Watchdog:
    """A stream's first-token and idle deadlines on one timer, not a timer per chunk.

    While the stream waits for the endpoint (``waiting_since`` set), the timer checks the
    deadline that applies (``first_by`` until the first bytes, then ``idle`` since the wait
    began) and cancels the waiting task once it passes; while the caller holds a chunk the
    clock does not run (a slow reader is not a stalled endpoint)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, first_by: float, idle: float) -> None:
        self.loop = loop
        self.first_by = first_by
        self.idle = idle
        self.got_first = False
        self.waiting_since: float | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cancelling = 0
        self.fired: str | None = None
        self._handle: asyncio.TimerHandle | None = loop.call_at(first_by, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        since = self.waiting_since
        if since is None:  # the caller holds a chunk: look again an idle period later
            self._handle = self.loop.call_at(now + self.idle, self._check)
            return
        due = since + self.idle if self.got_first else self.first_by
        if now < due:
            self._handle = self.loop.call_at(due, self._check)
            return
        self._handle = None
        self.fired = "between two chunks" if self.got_first else "before the first token"
        if self.task is not None:
            self.cancelling = self.task.cancelling()  # cancellations not ours
            self.task.cancel()

    def timed_out(self) -> bool:
        """After the wait was interrupted: whether by this watchdog (its cancel withdrawn)."""
        if self.fired is None or self.task is None:
            return False
        return self.task.uncancel() <= self.cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _SlotStream:
    """An open stream under the router's care: it holds the backend's concurrency slot until
    it is exhausted or closed, and makes the endpoint's stream trustworthy:

    - only whole SSE events go out (a stream cut inside an event leaves nothing half sent),
      and a malformed one ends the attempt (``BackendError``) instead of reaching the caller;
    - the backend's ``first_token_timeout_s`` (from sending the request) and
      ``idle_timeout_s`` (between chunks) end the attempt with ``BackendTimeout``;
    - an end without ``[DONE]`` is a cut (``BackendConnectionError``), unless the answer had
      finished (a ``finish_reason`` was sent): then ``[DONE]`` is added.

    A retryable failure counts against the backend's circuit too.
    """

    def __init__(
        self,
        inner: ByteStream,
        lease: Lease,
        on_failure: Callable[[InferenceError], None],
        backend: Backend,
        started: float,
    ) -> None:
        self.backend = backend.name
        self._config = backend.config
        self._started = started
        self._inner = inner
        self._lease = lease
        self._on_failure = on_failure

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        cfg = self._config
        dog = _Watchdog(loop, self._started + cfg.first_token_timeout_s, cfg.idle_timeout_s)
        chunks = self._inner.__aiter__()
        pending = b""
        last = previous = b""
        try:
            while True:
                dog.task = asyncio.current_task(loop)
                dog.waiting_since = loop.time()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except BaseException:
                    if dog.timed_out():
                        limit = cfg.idle_timeout_s if dog.got_first else cfg.first_token_timeout_s
                        raise BackendTimeout(
                            f"backend {self.backend!r} sent nothing {dog.fired} for {limit:g}s"
                        ) from None
                    raise
                finally:
                    dog.waiting_since = None
                dog.got_first = True
                if pending:
                    chunk, pending = pending + chunk, b""
                # the usual chunk: one whole event, one data line, a JSON object
                if not (chunk.endswith(b"}\n\n") and chunk.startswith(b"data: {")
                        and chunk.count(b"\n") == 2):  # fmt: skip
                    end = chunk.rfind(b"\n\n")
                    if end < 0:
                        pending = chunk
                        if len(pending) > MAX_EVENT_BYTES:
                            raise BackendError(f"backend {self.backend!r} sent an event too long")
                        continue
                    if end + 2 < len(chunk):
                        pending, chunk = chunk[end + 2 :], chunk[: end + 2]
                    if malformed(chunk):
                        raise BackendError(f"backend {self.backend!r} sent a malformed event")
                previous, last = last, chunk
                yield chunk
            if pending.strip():
                raise BackendConnectionError(f"backend {self.backend!r} ended the stream mid-event")
            if not last.endswith(SSE_DONE):
                if not (_finished(last) or _finished(previous)):
                    raise BackendConnectionError(
                        f"backend {self.backend!r} ended the stream before the answer did"
                    )
                yield SSE_DONE  # the answer was whole; only its closing event was missing
        except InferenceError as err:
            if err.retryable:
                self._on_failure(err)
            raise
        finally:
            dog.close()
            try:
                if self._lease.reservation is not None:  # the usage event, else as reserved
                    await self._lease.reservation.settle(
                        total_tokens(usage_from_tail(previous + last))
                    )
            finally:
                await self._lease.release()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            try:
                if self._lease.reservation is not None:
                    await self._lease.reservation.settle(None)
            finally:
                await self._lease.release()


def _quota_of(backend: Backend) -> BackendQuota | None:
    cfg = backend.config
    if not (cfg.tpm or cfg.rpm):
        return None
    from shared.quota import BackendQuota

    return BackendQuota(backend.name, cfg.tpm, cfg.rpm, cfg.quota_window_s)


#: Errors after which the endpoint did no work: a provider quota's reservation is refunded.
_NO_WORK = (BackendRateLimited, BackendUnavailable, BackendConnectionError)


async def _settle_quota(lease: Lease, result: Result | None, err: BaseException | None) -> None:
    reservation = lease.reservation
    if reservation is None:
        return
    if result is not None:
        await reservation.settle(total_tokens(result.usage()))
    elif isinstance(err, _NO_WORK) or (isinstance(err, BackendError) and not err.retryable):
        await reservation.settle(0)
    else:
        await reservation.settle(None)


class _Place:
    """A request's place in the queue for its candidates' slots (none until it must wait)."""

    __slots__ = ("capacity", "key", "waiter")

    def __init__(self, capacity: Capacity, key: frozenset[str]) -> None:
        self.capacity = capacity
        self.key = key
        self.waiter: Waiter | None = None

    def join(self) -> None:
        if self.waiter is None:
            self.waiter = self.capacity.join(self.key)

    def leave(self) -> None:
        if self.waiter is not None:
            self.capacity.leave(self.waiter)
            self.waiter = None


class Router:
    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        clock: Clock = time.monotonic,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        capacity: Capacity | None = None,
        max_tokens_cap: int = 4096,
    ) -> None:
        self.capacity = capacity or Capacity()
        self.max_tokens_cap = max_tokens_cap
        self.slots = [
            Slot(b, self.capacity.gate(b.name, b.config.max_concurrency), quota=_quota_of(b))
            for b in backends
        ]
        self._clock = clock
        self._rand = rand
        self._sleep = sleep

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def backends(self) -> list[Backend]:
        return [s.backend for s in self.slots]

    def price_of(self, backend: str) -> Price | None:
        for slot in self.slots:
            if slot.backend.name == backend:
                return slot.backend.config.price
        return None

    def worst_prices(self, model: str) -> tuple[float, float]:
        """The highest (input, output) price per token among the backends serving ``model``
        (what a request may cost before it is known where it will run)."""
        inp = out = 0.0
        for slot in self.slots:
            price = slot.backend.config.price
            if price is not None and slot.backend.config.serves(model):
                i, o, _ = price.per_token()
                inp, out = max(inp, i), max(out, o)
        return inp, out

    def check_model(self, model: str) -> None:
        """``ModelNotFound`` (404) unless a backend serves ``model``."""
        if not any(s.backend.config.serves(model) for s in self.slots):
            raise ModelNotFound(
                f"The model '{model}' does not exist or is not served here", param="model"
            )

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
        async def call(slot: Slot, lease: Lease) -> Result:
            result: Result | None = None
            err: BaseException | None = None
            try:
                result = await slot.backend.invoke(op, payload, ctx)
                return result
            except BaseException as exc:
                err = exc
                raise
            finally:
                try:
                    if lease.reservation is not None:
                        await _settle_quota(lease, result, err)
                finally:
                    await lease.release()

        return await self._route(str(payload.get("model", "")), call, ctx, payload=payload)

    async def open_stream(
        self,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        *,
        only: Callable[[Backend], bool] | None = None,
        skip_rejected: bool = False,
    ) -> ByteStream:
        """Open a stream on the first candidate that accepts it within its
        ``headers_timeout_s``. ``only`` limits the candidates (a continuation needs a
        backend that continues); ``skip_rejected`` moves past a backend that refuses the
        request (4xx) instead of answering with its refusal."""

        async def call(slot: Slot, lease: Lease) -> ByteStream:
            backend = slot.backend
            started = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(backend.config.headers_timeout_s):
                    inner = await backend.open_stream(op, payload, ctx)
            except TimeoutError:
                await _settle_quota(lease, None, None)
                await lease.release()
                raise BackendTimeout(
                    f"backend {backend.name!r} sent no response headers within "
                    f"{backend.config.headers_timeout_s:g}s"
                ) from None
            except BaseException as exc:
                await _settle_quota(lease, None, exc)
                await lease.release()
                raise

            def failed(err: InferenceError) -> None:
                slot.circuit.record_failure(err, self._clock())
                if isinstance(err, BackendTimeout):
                    ctx.abandoned.add(backend.name)

            return _SlotStream(inner, lease, failed, backend, started)

        model = str(payload.get("model", ""))
        return await self._route(
            model, call, ctx, only=only, skip_rejected=skip_rejected, payload=payload
        )

    def _need(self, payload: dict[str, Any] | None) -> int:
        from shared.quota import reservation_tokens

        return reservation_tokens(payload or {}, self.max_tokens_cap)

    @staticmethod
    def _over_quota(slot: Slot, need: int, now: float) -> float | None:
        """Seconds until the provider's last reported headroom would hold ``need``."""
        room = quota_headroom.get(slot.backend.name)
        return None if room is None else room.fits(need, time.monotonic())

    def _same_again(self, slot: Slot, err: InferenceError, ctx: Context) -> float | None:
        """The pause before trying ``slot`` once more after ``err``, or None to move on.

        A Retry-After within the backend's ``retry_after_wait_s`` (and the deadline) is
        waited out there: the endpoint said when it will answer. A lone 5xx or a reset gets
        one quick retry. A timeout never does: a silent endpoint is abandoned for this
        request. 429 without Retry-After moves on at once."""
        if isinstance(err, BackendTimeout):
            ctx.abandoned.add(slot.backend.name)
            return None
        wait = err.retry_after
        if wait is not None and wait > 0:
            if wait > slot.backend.config.retry_after_wait_s:
                return None
        elif isinstance(err, BackendRateLimited):
            return None
        else:
            wait = QUICK_RETRY_S * (1 + self._rand())
        if wait + MIN_ATTEMPT_S >= ctx.remaining():
            return None
        if ctx.tries_left is not None:  # one budget: this try is drawn from it too
            if ctx.tries_left <= 0:
                return None
            ctx.tries_left -= 1
        return wait

    async def _route(
        self,
        model: str,
        call: Callable[[Slot, Lease], Awaitable[T]],
        ctx: Context,
        *,
        only: Callable[[Backend], bool] | None = None,
        skip_rejected: bool = False,
        payload: dict[str, Any] | None = None,
    ) -> T:
        """Try candidates in order; ``call`` owns releasing the slot it was given."""
        plan = self.plan(model)
        if only is not None:
            plan = [s for s in plan if only(s.backend)]
        place = _Place(self.capacity, frozenset(s.backend.name for s in plan))
        if self.capacity.queued(place.key):  # first come, first served: behind those waiting
            place.join()
        try:
            return await self._passes(model, plan, call, ctx, skip_rejected, place, payload)
        finally:
            place.leave()

    async def _passes(
        self,
        model: str,
        plan: list[Slot],
        call: Callable[[Slot, Lease], Awaitable[T]],
        ctx: Context,
        skip_rejected: bool,
        place: _Place,
        payload: dict[str, Any] | None,
    ) -> T:
        capacity = self.capacity
        failed: Slot | None = None
        if place.waiter is not None:
            await capacity.wait_turn(place.waiter, ctx, model)
        while True:
            now = self._clock()
            last_err: InferenceError | None = None
            reopen_at: float | None = None
            waiting_for_slot = False
            for slot in plan:
                if slot.backend.name in ctx.abandoned:
                    continue
                again = True  # one more try on this slot after a failure
                while True:
                    now = self._clock()
                    if not slot.circuit.admits(now):
                        if slot.circuit.open_until > now:
                            soon = slot.circuit.open_until
                            reopen_at = soon if reopen_at is None else min(reopen_at, soon)
                        break
                    if slot.quota is not None or slot.backend.name in quota_headroom:
                        need = self._need(payload)
                        wait_s = self._over_quota(slot, need, now)
                        if wait_s is not None:  # spent: passed over like an open circuit
                            soon = now + wait_s
                            reopen_at = soon if reopen_at is None else min(reopen_at, soon)
                            break
                    lease = await slot.gate.take(ctx)
                    if lease is None:
                        waiting_for_slot = True
                        break
                    if slot.quota is not None:
                        reservation, wait_s = await slot.quota.take(self._need(payload), ctx)
                        if reservation is None:
                            await lease.release()
                            soon = self._clock() + wait_s
                            reopen_at = soon if reopen_at is None else min(reopen_at, soon)
                            telemetry.record_throttle(ctx, "backend_quota")
                            break
                        lease.reservation = reservation
                    place.leave()  # served: the next in line may look
                    if slot.circuit.state(now) == "half_open":
                        slot.circuit.probing = True
                        telemetry.record_circuit(slot.backend.name, "half_open")
                    if failed is not None and failed is not slot:
                        telemetry.record_failover(ctx, failed.backend.name, slot.backend.name)
                    tried = telemetry.attempt(ctx, slot.backend)
                    try:
                        result = await call(slot, lease)
                    except InferenceError as err:
                        tried.end(err)
                        if not err.retryable:
                            if isinstance(err, BackendError):
                                slot.circuit.record_success()  # it answered; the request was bad
                            else:
                                slot.circuit.probing = False
                            if isinstance(err, ContextTooLong) or (
                                skip_rejected and isinstance(err, BackendError)
                            ):
                                last_err, failed = err, slot
                                break  # the next backend may take it (a larger context)
                            raise
                        last_err, failed = err, slot
                        pause = self._same_again(slot, err, ctx) if again else None
                        if pause is None or err.retry_after:
                            # a quick retry's first failure is not the circuit's business:
                            # the request counts once, as before the retry existed
                            slot.circuit.record_failure(err, self._clock())
                        if pause is None:
                            break
                        again = False
                        record_retry(ctx, err)
                        await self._sleep(pause)
                        continue
                    except BaseException as exc:
                        tried.end(exc)
                        slot.circuit.probing = False
                        raise
                    tried.end()
                    slot.circuit.record_success()
                    return result
            silent = bool(plan) and all(s.backend.name in ctx.abandoned for s in plan)
            if last_err is not None:
                if silent:  # another pass here would find no backend to call
                    last_err.retry_here = False
                raise last_err
            if waiting_for_slot:
                if ctx.prefer_async:
                    raise AtCapacity(
                        f"every backend serving '{model}' is at capacity", retry_after=1.0
                    )
                place.join()
                assert place.waiter is not None
                await capacity.wait_turn(place.waiter, ctx, model)
                continue
            if silent:
                timed_out = BackendTimeout(f"every backend serving '{model}' timed out")
                timed_out.retry_here = False
                raise timed_out
            if not plan:
                raise BackendError(f"no backend serving '{model}' can take this request")
            wait = (reopen_at - now) if reopen_at is not None else DEFAULT_OPEN_S
            cooling = [s for s in plan if s.circuit.open_until > now or s.circuit.probing]
            if cooling and all(s.circuit.warming for s in cooling):
                warming = BackendWarming(
                    f"every backend serving '{model}' is scaling out (no capacity yet)",
                    retry_after=max(wait, 0.001),
                )
                warming.retry_here = False
                raise warming
            raise BackendUnavailable(
                f"every backend serving '{model}' is cooling down after failures",
                retry_after=max(wait, 0.001),
            )
