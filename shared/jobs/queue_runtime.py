"""Carry out a worker ``Outcome`` on each platform (used by functions/queue_worker).

Azure Storage queue (``run_storage_queue_message``):
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

SQS (``run_sqs_batch``, partial batch response via Powertools' ``AsyncBatchProcessor``; the
records of a batch run concurrently):
  ack -> success.
  defer -> the message is sent again with ``DelaySeconds``, then acked.
  retry -> ``ChangeMessageVisibility`` to the backoff, then report the item failed (only
    ``batchItemFailures`` return to the queue). After ``maxReceiveCount`` receives SQS's
    redrive moves it to the DLQ; the job is marked failed on the last receive.
  poison -> sent to the queue's DLQ at once (found from the queue's RedrivePolicy) with a
    ``reason`` message attribute, then acked. Without a DLQ it is reported failed and takes
    the normal redrive path.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from typing import Any

from shared import telemetry
from shared.blocking import run_blocking
from shared.context import Context
from shared.jobs.config import POISON_QUEUE_NAME, QUEUE_NAME, get_job_settings
from shared.jobs.worker import Attempt, Outcome, process_message
from shared.lifecycle import Keyed
from shared.storage.deadline import storage_deadline

log = logging.getLogger("shared.jobs.queue")


class RetryLater(Exception):
    """Raised to make the platform redeliver the message after ``visibility_timeout`` s."""

    def __init__(self, reason: str, visibility_timeout: float, job_id: str | None = None) -> None:
        super().__init__(f"job {job_id}: retry in {visibility_timeout:.1f}s: {reason}")
        self.visibility_timeout = visibility_timeout
        self.job_id = job_id


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
    if inserted_at is not None:
        telemetry.record_queue_time(time.time() - inserted_at.timestamp(), QUEUE_NAME)
    try:
        return await _storage_queue_message(body, dequeue_count, ctx, settings.max_attempts)
    finally:
        await telemetry.flush(ctx)


async def _storage_queue_message(
    body: bytes, dequeue_count: int, ctx: Context, max_attempts: int
) -> Outcome:
    from shared.storage.queues import get_queue

    attempt = Attempt(max(1, dequeue_count), max_attempts)
    outcome = await process_message(body, attempt, ctx)
    _log(outcome, attempt)
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


def _log(outcome: Outcome, attempt: Attempt) -> None:
    level = logging.INFO if outcome.action == "ack" else logging.WARNING
    log.log(
        level,
        "job=%s attempt=%d/%d action=%s status=%s delay_s=%.2f reason=%s",
        outcome.job_id,
        attempt.number,
        attempt.max_attempts,
        outcome.action,
        outcome.status,
        outcome.delay_s,
        outcome.reason or "-",
    )


# -- SQS ---------------------------------------------------------------------------------


def _sqs() -> Any:
    from shared.storage.s3 import aws_client

    return aws_client("sqs")


def _lookup_queue_url(arn: str) -> str:
    parts = arn.split(":")
    name, account = parts[-1], parts[-2]
    return str(_sqs().get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])


def _lookup_dlq_url(arn: str) -> str | None:
    attrs = _sqs().get_queue_attributes(QueueUrl=_queue_url(arn), AttributeNames=["RedrivePolicy"])
    policy = attrs.get("Attributes", {}).get("RedrivePolicy")
    return _queue_url(json.loads(policy)["deadLetterTargetArn"]) if policy else None


#: Queue URLs per ARN (the queue an SQS record came from; its dead-letter queue, or None).
_queue_urls = Keyed(_lookup_queue_url)
_dlq_urls = Keyed(_lookup_dlq_url)


def _queue_url(arn: str) -> str:
    """The URL of the queue an SQS record came from (cached per ARN)."""
    return _queue_urls.get(arn)


def _dlq_url(arn: str) -> str | None:
    return _dlq_urls.get(arn)


def _change_visibility(record: Any, delay_s: float) -> None:
    _sqs().change_message_visibility(
        QueueUrl=_queue_url(record.event_source_arn),
        ReceiptHandle=record.receipt_handle,
        VisibilityTimeout=min(43_200, max(0, round(delay_s))),
    )


def _send_to_dlq(record: Any, reason: str) -> bool:
    url = _dlq_url(record.event_source_arn)
    if url is None:
        return False
    _sqs().send_message(
        QueueUrl=url,
        MessageBody=record.body,
        MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]}},
    )
    return True


def run_sqs_batch(event: dict[str, Any], lambda_context: Any) -> dict[str, Any]:
    """Lambda SQS handler body: ``{"batchItemFailures": [...]}`` with exactly the failed ids."""
    from aws_lambda_powertools.utilities.batch import (
        AsyncBatchProcessor,
        EventType,
        async_process_partial_response,
    )

    from shared.storage.queues import get_queue

    settings = get_job_settings()
    deadline = Context.from_lambda(lambda_context).deadline

    async def handle(record: Any) -> None:
        attempt = Attempt(
            max(1, int(record.attributes.approximate_receive_count or 1)), settings.max_attempts
        )
        sent = record.attributes.sent_timestamp
        if sent:
            telemetry.record_queue_time(time.time() - int(sent) / 1000.0, QUEUE_NAME)
        ctx = Context(deadline=deadline)
        outcome = await process_message(record.body, attempt, ctx)
        _log(outcome, attempt)
        with storage_deadline(ctx.remaining()):
            await settle(record, outcome)

    async def settle(record: Any, outcome: Outcome) -> None:
        if outcome.action == "retry":
            if outcome.delay_s > 0:
                try:
                    await run_blocking(_change_visibility, record, outcome.delay_s)
                except Exception as exc:  # the item still fails: SQS's own timeout applies
                    log.warning("job %s: visibility change failed: %s", outcome.job_id, exc)
            raise RetryLater(outcome.reason, outcome.delay_s, outcome.job_id)
        if outcome.action == "defer":  # the original bytes: a derived job id stays the same
            again = get_queue(QUEUE_NAME, url=_queue_url(record.event_source_arn))
            await run_blocking(again.send_text, record.body, delay_s=outcome.delay_s)
        if outcome.action == "poison":
            sent = await run_blocking(_send_to_dlq, record, outcome.reason)
            if not sent:
                raise RetryLater(f"poison (no DLQ configured): {outcome.reason}", 0, outcome.job_id)

    processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    try:
        return dict(async_process_partial_response(event, handle, processor, lambda_context))
    finally:
        telemetry.flush_sync(Context(deadline=deadline))
