"""Azure Functions glue: carry out a job worker ``Outcome`` on the Storage-queue trigger.

``run_storage_queue_message`` (``functions/queue_worker/azure.py``):
  ack -> return (the host deletes the message).
  defer -> the same message is sent again with the delay (``visibility_timeout`` on the new
    message: the only way to delay a redelivery, since the host ignores any delay a function
    computes), then acked, so throttling does not use up maxDequeueCount.
  retry -> raise ``RetryLater``: the host (and devhost, which behaves the same) makes the
    message visible again after host.json's fixed ``visibilityTimeout``; the exception's
    ``visibility_timeout`` is informational only. On the last dequeue the job is already
    marked failed and the host moves the message to ``inference-requests-poison``.
  retry while another delivery holds the job's lease (``Outcome.requeue``) -> handled as a
    defer: re-enqueued with the wait for that lease, then acked, so a redelivery after a crash
    does not burn through maxDequeueCount while the dead delivery's lease runs out.
  poison -> the message is written to ``inference-requests-poison`` by the worker itself as
    ``{"reason", "job_id", "message"}`` (so the reason travels with it), then acked: raising
    five times would only delay the inevitable.

The queues are ``shared.storage.queues`` (Azure Storage deployed and under devhost with
Azurite, a local spool otherwise), imported on first use.
"""

from __future__ import annotations

import datetime
from typing import Any

from shared import telemetry
from shared.blocking import run_blocking
from shared.context import Context
from shared.jobs.config import POISON_QUEUE_NAME, QUEUE_NAME, get_job_settings
from shared.jobs.queue_runtime import RetryLater, deliver
from shared.jobs.worker import Attempt, Outcome
from shared.storage.deadline import storage_deadline


def poison_message(outcome: Outcome, original: bytes) -> dict[str, Any]:
    return {
        "reason": outcome.reason,
        "job_id": outcome.job_id,
        "message": original.decode("utf-8", errors="replace"),
    }


async def run_storage_queue_message(
    body: bytes, dequeue_count: int, inserted_at: datetime.datetime | None = None
) -> Outcome:
    """One Azure Storage-queue delivery (``body`` already base64-decoded by the host)."""
    settings = get_job_settings()
    ctx = Context.with_timeout(settings.job_timeout_s)
    enqueued_at = inserted_at.timestamp() if inserted_at is not None else None
    try:
        return await _storage_queue_message(
            body, dequeue_count, ctx, settings.max_attempts, enqueued_at
        )
    finally:
        await telemetry.flush(ctx)


async def _storage_queue_message(
    body: bytes, dequeue_count: int, ctx: Context, max_attempts: int, enqueued_at: float | None
) -> Outcome:
    from shared.storage.queues import get_queue

    attempt = Attempt(max(1, dequeue_count), max_attempts)
    outcome = await deliver(body, attempt, ctx, enqueued_at)
    if outcome.action == "retry" and outcome.requeue:
        # The host would ignore the delay (another delivery's lease) and redeliver after its
        # fixed visibilityTimeout, using up maxDequeueCount: re-enqueue with the delay instead.
        outcome = Outcome("defer", outcome.job_id, outcome.delay_s, outcome.reason, outcome.status)
    if outcome.action == "retry":
        raise RetryLater(outcome.reason, outcome.delay_s, outcome.job_id)
    if outcome.action == "defer":  # the original bytes: a derived job id stays the same
        again = get_queue(QUEUE_NAME)
        with storage_deadline(ctx.remaining()):
            await run_blocking(again.send_text, body.decode(), delay_s=outcome.delay_s)
    if outcome.action == "poison":
        poison = get_queue(POISON_QUEUE_NAME)
        with storage_deadline(ctx.remaining()):
            await run_blocking(poison.send, poison_message(outcome, body))
    return outcome
