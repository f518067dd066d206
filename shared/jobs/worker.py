"""The queue worker's logic, shared by the Azure Storage-queue and SQS adapters.

``process_message(text, attempt, ctx)`` runs one delivery of one job and returns an
``Outcome`` the adapter carries out:

- ``ack``: delete the message. The job succeeded, failed for good (a 4xx such as an invalid
  body is a *completed* job whose result is an error, so it is not poisoned), or was already
  finished by an earlier delivery (the model is not called again).
- ``retry``: make the message visible again after ``delay_s``: a retryable failure (the
  endpoint's Retry-After when it gave one, else exponential backoff), another delivery holds
  the job's lease, or too little time was left to start. On the last attempt
  (``attempt.last``) a model failure is written to the job as ``failed`` first, and the
  platform then moves the message to the poison queue / DLQ. The deliveries and the
  service's retries share one budget of tries (``Worker.budget``, counted in the record):
  once it is spent the job is ``failed`` and its message ``poison``, whatever delivery it is.
- ``defer``: the endpoint is throttling (429, or 503 / a cooling-down circuit): the adapter
  sends the same message again with ``delay_s`` (the Retry-After) and acks this one, so a
  long rate-limit episode does not use up the delivery attempts (``maxDequeueCount``) and
  poison healthy jobs. At most ``INFER_JOB_MAX_DEFERS`` times per job, then it counts as
  an ordinary retryable failure. A job that found no capacity (the endpoint scaling out
  from zero, or every backend at ``max_concurrency``) is deferred without counting a
  deferral or a try, for up to ``INFER_JOB_MAX_WAIT_S`` from its submission. (A crash
  between send and ack leaves two messages for the job, which the lease and the succeeded
  check make harmless.)
- ``poison``: the message can never succeed (not JSON, no or unknown ``url``, missing
  ``body_ref``): the job (when the message names one) is marked failed with the reason and
  the adapter moves the message to the poison queue / DLQ at once, without retries.

Exactly-once: before calling the model a delivery claims the job with a conditional write
(status ``running`` + a lease that outlives the invocation's deadline). A second delivery
that finds a live lease backs off; one that finds the job finished acks. The result is
written with a conditional write over the claim, so the record reaches ``succeeded`` once.
The model can be called twice for one job only when a delivery dies after the model
answered and before the record was written (or outlives its own deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared import telemetry
from shared.blocking import run_blocking
from shared.context import Context
from shared.errors import (
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
    DeadlineExceeded,
    InferenceError,
    InvalidRequest,
)
from shared.jobs.callback import send_callback
from shared.jobs.config import JobSettings, get_job_settings
from shared.jobs.model import (
    JobLine,
    JobRecord,
    Lease,
    MalformedMessage,
    derived_id,
    parse_line,
)
from shared.jobs.store import JobStore, PreconditionFailed, Versioned, get_job_store
from shared.principal import ANONYMOUS
from shared.retry import retry_share, unit_budget
from shared.service import Service, get_service
from shared.settings import setting_set
from shared.storage.deadline import storage_deadline

log = logging.getLogger("shared.jobs.worker")

#: Do not claim a job with less time than this left: release it for a later delivery.
MIN_RUN_S = 0.5
#: A lease outlives the invocation deadline by this much (clock skew, write latency).
LEASE_MARGIN_S = 2.0
CLAIM_TRIES = 4
#: Why a delivery finds nothing left of the job's retry budget (``Worker.budget``).
BUDGET_SPENT = "the job's retry budget is spent"

Action = Literal["ack", "retry", "defer", "poison"]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Attempt:
    """Which delivery this is (1-based: Azure dequeue_count, SQS ApproximateReceiveCount)."""

    number: int
    max_attempts: int

    @property
    def last(self) -> bool:
        return self.number >= self.max_attempts


@dataclass(frozen=True)
class Outcome:
    action: Action
    job_id: str | None = None
    delay_s: float = 0.0
    reason: str = ""
    status: str | None = None
    #: A ``retry`` whose delay matters and that must not use up a delivery (another
    #: delivery holds the job's lease): adapters whose platform ignores a computed delay
    #: (Azure) re-enqueue the message with the delay instead.
    requeue: bool = False


@dataclass
class Worker:
    """The pieces a delivery needs; ``Worker.default()`` uses the process's own."""

    jobs: JobStore
    service: Service
    settings: JobSettings
    clock: Clock = time.time
    rand: Callable[[], float] = random.random

    @classmethod
    def default(cls) -> Worker:
        return cls(get_job_store(), get_service(), get_job_settings())

    # -- delays ---------------------------------------------------------------------------

    def backoff(self, attempt: Attempt) -> float:
        base = self.settings.job_retry_base_s * 2.0 ** max(0, attempt.number - 1)
        return min(base, self.settings.job_retry_max_s) * (1 - 0.25 * self.rand())

    def budget(self, attempt: Attempt) -> int:
        """Service tries one job may make over all its deliveries: 1 + INFER_MAX_RETRIES, plus
        one for each further delivery (INFER_MAX_ATTEMPTS - 1) and throttling deferral
        (INFER_JOB_MAX_DEFERS). Counted in the record (``tries``), so redeliveries share it."""
        later = attempt.max_attempts - 1 + self.settings.job_max_defers
        return unit_budget(self.service.settings.max_retries, later)

    def retry_delay(self, err: InferenceError, attempt: Attempt) -> float:
        if err.retry_after is not None and err.retry_after > 0:
            return min(err.retry_after, self.settings.job_retry_max_s)
        return self.backoff(attempt)

    # -- record writes --------------------------------------------------------------------

    async def _write_over(
        self,
        line: JobLine,
        job_id: str,
        build: Callable[[JobRecord], JobRecord | Outcome],
    ) -> Versioned | Outcome:
        """Write ``build(current)`` with one conditional write over what is believed stored.

        The first try reads nothing: the message's ``"job"`` seed names the stored version
        (``if_match`` its etag); a message without one assumes no record yet
        (``if_none_match``). Only when that condition fails is the record read, and
        ``build`` decides again on what is really there (finished: ack; leased: retry).
        """
        seeded = JobRecord.from_seed(line, job_id)
        current: Versioned | None = Versioned(*seeded) if seeded else None
        for _ in range(CLAIM_TRIES):
            base = current.record if current is not None else JobRecord.new(line, job_id)
            decided = build(base)
            if isinstance(decided, Outcome):
                return decided
            try:
                if current is None:
                    return await self.jobs.acreate(decided)
                return await self.jobs.areplace(decided, current.etag)
            except PreconditionFailed:
                current = await self.jobs.aget(job_id)
        return Outcome("retry", job_id, delay_s=1.0, reason="lost the race to write the job")

    async def _write_final(
        self, current: Versioned, update: dict[str, Any]
    ) -> tuple[JobRecord, bool]:
        """Write a terminal state over ``current``; (record, False) if another finished first."""
        for _ in range(CLAIM_TRIES):
            record = current.record.model_copy(
                update={**update, "lease": None, "completed_at": int(self.clock())}
            )
            try:
                await self.jobs.areplace(record, current.etag)
                await _job_done(record)
                return record, True
            except PreconditionFailed:
                found = await self.jobs.aget(record.id)
                if found is None:
                    created = await self.jobs.acreate(record)
                    await _job_done(created.record)
                    return created.record, True
                if found.record.terminal:
                    return found.record, False
                current = found
        raise PreconditionFailed(f"job {current.record.id}: could not write its result")

    async def _finish_unclaimed(
        self, line: JobLine, job_id: str, update: dict[str, Any]
    ) -> tuple[JobRecord, bool]:
        """Write a terminal state without holding the claim (invalid body, last attempt)."""
        final: dict[str, JobRecord] = {}

        def build(current: JobRecord) -> JobRecord | Outcome:
            if current.terminal:
                final["found"] = current
                return Outcome("ack", job_id)
            return current.model_copy(
                update={**update, "lease": None, "completed_at": int(self.clock())}
            )

        written = await self._write_over(line, job_id, build)
        if isinstance(written, Versioned):
            await _job_done(written.record)
            return written.record, True
        if "found" in final:
            return final["found"], False
        raise PreconditionFailed(f"job {job_id}: could not write its result")

    async def _release(self, claim: Versioned) -> None:
        """Give the job back (queued, no lease) unless someone else changed it meanwhile."""
        record = claim.record.model_copy(update={"status": "queued", "lease": None})
        try:
            await self.jobs.areplace(record, claim.etag)
        except PreconditionFailed:
            pass
        except Exception:  # storage trouble: the lease simply expires
            log.warning("job %s: releasing its lease failed", record.id, exc_info=True)

    async def _claim(
        self, line: JobLine, job_id: str, ctx: Context, attempt: Attempt
    ) -> Versioned | Outcome:
        """One conditional write: ``running`` + a lease that outlives this invocation, and
        this delivery's share of the job's retry budget reserved (``ctx.tries_left``)."""

        def build(record: JobRecord) -> JobRecord | Outcome:
            if record.terminal:
                return Outcome(
                    "ack", job_id, reason=f"already {record.status}", status=record.status
                )
            now = self.clock()
            if record.lease is not None and record.lease.until > now:
                wait = min(record.lease.until - now + 0.5, self.settings.job_retry_max_s)
                return Outcome(
                    "retry", job_id, delay_s=wait, reason="leased by another delivery", requeue=True
                )
            # keep one try back for each delivery the job may still get after this one
            later = attempt.max_attempts - attempt.number
            later += max(0, self.settings.job_max_defers - record.deferrals)
            share = retry_share(self.budget(attempt) - record.tries, self._max_retries, later)
            if share <= 0:
                return Outcome("poison", job_id, reason=BUDGET_SPENT, status="failed")
            ctx.tries_left = share  # the share of the record this build returns (last wins)
            lease = Lease(token=uuid.uuid4().hex, until=now + ctx.remaining() + LEASE_MARGIN_S)
            return record.model_copy(
                update={"status": "running", "attempts": record.attempts + 1, "lease": lease,
                        "tries": record.tries + share}
            )  # fmt: skip

        return await self._write_over(line, job_id, build)

    # -- one delivery ---------------------------------------------------------------------

    async def process(self, raw: bytes | str, attempt: Attempt, ctx: Context) -> Outcome:
        """One delivery. Whatever fails (storage down, a bug), the answer is an ``Outcome``:
        a claim held is released, and on the last attempt the job is written ``failed``
        first, so no record stays ``running``/``queued`` once its message is gone."""
        text = raw.encode() if isinstance(raw, str) else raw
        held: list[Versioned] = []
        line: JobLine | None = None
        job_id: str | None = None
        with storage_deadline(ctx.remaining()):
            try:
                try:
                    line = parse_line(json.loads(text))
                except MalformedMessage as exc:
                    return await self._malformed(exc.reason, exc.job_id, text)
                except (ValueError, UnicodeDecodeError) as exc:
                    return await self._malformed(f"message is not valid JSON: {exc}", None, text)
                job_id = line.id or derived_id(text)
                ctx.request_id = job_id
                ctx.traceparent = line.traceparent or ctx.traceparent
                ctx.entry = "queue"
                return await self._deliver(line, job_id, text, attempt, ctx, held)
            except Exception as exc:
                return await self._failed_delivery(exc, line, job_id, attempt, ctx, held)

    async def _deliver(
        self,
        line: JobLine,
        job_id: str,
        text: bytes,
        attempt: Attempt,
        ctx: Context,
        held: list[Versioned],
    ) -> Outcome:
        try:
            body = line.body
            if line.body_ref is not None:
                body = await run_blocking(_load_ref, line.body_ref)
            payload = self.service.validate(line.op, body)
        except LookupError as exc:
            return await self._malformed(str(exc), job_id, text)
        except InvalidRequest as err:
            record, wrote = await self._finish_unclaimed(line, job_id, _failure(err))
            if wrote:
                await self._callback(line, record, ctx)
                return Outcome(
                    "ack", job_id, reason=f"invalid request: {err.message}", status="failed"
                )
            return Outcome("ack", job_id, reason=f"already {record.status}", status=record.status)
        if ctx.remaining() < MIN_RUN_S:
            await self._ensure_record(line, job_id)
            return Outcome("retry", job_id, delay_s=1.0, reason="too little time left to start")
        claim = await self._claim(line, job_id, ctx, attempt)
        if isinstance(claim, Outcome):
            if claim.reason == BUDGET_SPENT:  # earlier deliveries used it (one died holding it)
                error = {"code": "retry_budget_spent", "message": BUDGET_SPENT}
                record, wrote = await self._finish_unclaimed(
                    line, job_id, {"status": "failed", "error": error}
                )
                if wrote:
                    await self._callback(line, record, ctx)
            return claim
        held.append(claim)
        # charged to the caller that submitted it (stored with the job at submit time)
        ctx.caller = claim.record.caller or ANONYMOUS
        return await self._run(line, payload, claim, attempt, ctx)

    async def _ensure_record(self, line: JobLine, job_id: str) -> None:
        """The job is readable (``queued``) even before any delivery could start it."""
        if JobRecord.from_seed(line, job_id) is None:
            with contextlib.suppress(PreconditionFailed):
                await self.jobs.acreate(JobRecord.new(line, job_id))

    async def _answer(self, line: JobLine, payload: dict[str, Any], ctx: Context) -> Any:
        result = await self.service.complete(line.op, payload, ctx)
        try:
            return result.json()
        except ValueError as exc:  # a 2xx whose body is not JSON: the endpoint's fault
            raise BackendError("the endpoint answered 2xx with a body that is not JSON") from exc

    async def _run(
        self,
        line: JobLine,
        payload: dict[str, Any],
        claim: Versioned,
        attempt: Attempt,
        ctx: Context,
    ) -> Outcome:
        job_id = claim.record.id
        ctx.caller = claim.record.caller
        telemetry.record_job_start(
            ctx, self.clock() - claim.record.created_at, line.op, str(payload.get("model", ""))
        )
        reserved = ctx.tries_left or 0
        try:
            body = await self._answer(line, payload, ctx)
        except InferenceError as err:
            if getattr(err, "waits", False) and (
                self.clock() - claim.record.created_at < self.settings.job_max_wait_s
            ):  # no capacity yet (warming, or every backend full): wait, costing nothing
                tries = max(0, claim.record.tries - reserved)
                return await self._defer(claim, {"tries": tries}, err, attempt)
            claim = self._settle_tries(claim, ctx)
            if not (err.retryable or isinstance(err, DeadlineExceeded)):
                record, _ = await self._write_final(claim, _failure(err))
                await self._callback(line, record, ctx)
                return Outcome("ack", job_id, reason=err.message, status="failed")
            spent = claim.record.tries >= self.budget(attempt)
            if spent and not attempt.last:  # no try left for a later delivery: fail it now
                record, _ = await self._write_final(claim, _failure(err))
                await self._callback(line, record, ctx)
                reason = f"failed after {claim.record.tries} tries: {err.message}"
                return Outcome("poison", job_id, reason=reason, status="failed")
            if _throttled(err) and claim.record.deferrals < self.settings.job_max_defers:
                deferrals = claim.record.deferrals + 1
                return await self._defer(claim, {"deferrals": deferrals}, err, attempt)
            if attempt.last:
                record, _ = await self._write_final(claim, _failure(err))
                await self._callback(line, record, ctx)
                reason = f"failed after {attempt.number} attempts: {err.message}"
                return Outcome("retry", job_id, reason=reason, status="failed")
            await self._release(claim)
            return Outcome(
                "retry",
                job_id,
                delay_s=self.retry_delay(err, attempt),
                reason=err.message,
                status="queued",
            )
        except BaseException:
            await asyncio.shield(self._release(self._settle_tries(claim, ctx)))
            raise
        claim = self._settle_tries(claim, ctx)
        response = {"status_code": 200, "request_id": job_id, "body": body}
        cost = None if ctx.cost is None else round(ctx.cost, 6)
        record, wrote = await self._write_final(
            claim, {"status": "succeeded", "response": response, "error": None, "cost": cost}
        )
        if wrote:
            await self._callback(line, record, ctx)
        return Outcome("ack", job_id, status=record.status)

    async def _defer(
        self, claim: Versioned, update: dict[str, Any], err: InferenceError, attempt: Attempt
    ) -> Outcome:
        """Release the job with ``update`` and have its message sent again after the
        endpoint's Retry-After (a fresh message: no delivery attempt used)."""
        released = claim.record.model_copy(update=update)
        await self._release(Versioned(released, claim.etag))
        return Outcome(
            "defer",
            claim.record.id,
            delay_s=self.retry_delay(err, attempt),
            reason=err.message,
            status="queued",
        )

    @property
    def _max_retries(self) -> int:
        return self.service.settings.max_retries

    @staticmethod
    def _settle_tries(claim: Versioned, ctx: Context) -> Versioned:
        """The claim with the tries it reserved but did not use given back (written with
        the release or the result, over the claim's etag)."""
        unused = max(ctx.tries_left or 0, 0)
        if not unused:
            return claim
        record = claim.record.model_copy(update={"tries": claim.record.tries - unused})
        return Versioned(record, claim.etag)

    async def _failed_delivery(
        self,
        exc: Exception,
        line: JobLine | None,
        job_id: str | None,
        attempt: Attempt,
        ctx: Context,
        held: list[Versioned],
    ) -> Outcome:
        """A failure outside the model's answer (storage unreachable, an unexpected bug)."""
        reason = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("job %s: delivery failed: %s", job_id, reason, exc_info=True)
        if attempt.last and line is not None and job_id is not None:
            # The platform poisons the message next: leave the record final.
            error = {"code": "worker_error", "message": reason}
            update = {"status": "failed", "error": error}
            try:
                if held:
                    await self._write_final(held[-1], update)
                else:
                    await self._finish_unclaimed(line, job_id, update)
                return Outcome("retry", job_id, reason=f"failed: {reason}", status="failed")
            except Exception:
                log.warning("job %s: could not mark the job failed", job_id, exc_info=True)
        elif held:
            await asyncio.shield(self._release(held[-1]))
        return Outcome("retry", job_id, delay_s=self.backoff(attempt), reason=reason)

    async def _malformed(self, reason: str, job_id: str | None, text: bytes) -> Outcome:
        log.warning("poison message job_id=%s: %s", job_id, reason)
        if job_id is not None:
            error = {"code": "invalid_message", "message": reason}
            now = int(self.clock())
            record = JobRecord(id=job_id, created_at=now, status="failed", error=error,
                               completed_at=now)  # fmt: skip
            try:
                await self.jobs.acreate(record)
            except PreconditionFailed:
                current = await self.jobs.aget(job_id)
                try:
                    if current is None:
                        await self.jobs.acreate(record)
                    elif not current.record.terminal:
                        await self._write_final(current, {"status": "failed", "error": error})
                except PreconditionFailed:
                    log.warning("job %s: could not mark the malformed job failed", job_id)
        return Outcome("poison", job_id, reason=reason, status="failed" if job_id else None)

    async def _callback(self, line: JobLine, record: JobRecord, ctx: Context) -> None:
        if line.callback_url:
            await send_callback(
                line.callback_url,
                record.public(),
                ctx,
                secret=self.settings.callback_secret,
                timeout_s=self.settings.callback_timeout_s,
                allow=self.settings.callback_policy(),
            )


async def _job_done(record: JobRecord) -> None:
    """A job ended: its caller's ``max_queued_jobs`` slot is freed (limits configured)."""
    if not record.caller or not setting_set("INFER_LIMITS"):
        return
    from shared.limits import get_limiter

    limiter = get_limiter()
    if limiter is not None:
        try:
            await limiter.job_done(record.caller, record.id)
        except Exception:  # the slot expires on its own (QUEUED_JOB_HOLD_S)
            log.exception("job %s: its queued slot was not freed", record.id)


def _throttled(err: InferenceError) -> bool:
    return isinstance(err, BackendRateLimited | BackendUnavailable)


def _failure(err: InferenceError) -> dict[str, Any]:
    return {
        "status": "failed",
        "response": {"status_code": err.status, "body": err.to_dict()},
        "error": {"code": err.code or err.type, "message": err.message},
    }


def _load_ref(ref: str) -> Any:
    from shared.storage.queues import load_body_ref

    return load_body_ref(ref)


async def process_message(
    raw: bytes | str, attempt: Attempt, ctx: Context, *, worker: Worker | None = None
) -> Outcome:
    """Run one delivery with the process's job store, service and settings."""
    return await (worker or Worker.default()).process(raw, attempt, ctx)
