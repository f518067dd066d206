"""AWS Lambda glue: SQS and S3 events parsed with Powertools, and the SQS calls.

``run_sqs_batch`` (``functions/queue_worker/aws.py``): a job worker ``Outcome`` per record
of the jobs queue, as a partial batch response (Powertools' ``AsyncBatchProcessor``; the
records of a batch run concurrently):
  ack -> success.
  defer -> the message is sent again with ``DelaySeconds``, then acked.
  retry -> ``ChangeMessageVisibility`` to the backoff, then report the item failed (only
    ``batchItemFailures`` return to the queue). After ``maxReceiveCount`` receives SQS's
    redrive moves it to the DLQ; the job is marked failed on the last receive.
  poison -> sent to the queue's DLQ at once (found from the queue's RedrivePolicy) with a
    ``reason`` message attribute, then acked. Without a DLQ it is reported failed and takes
    the normal redrive path.

``sqs_batch`` (``functions/batch/aws.py``, shard messages): Powertools' ``BatchProcessor``,
one record after the other; ``batchItemFailures`` names exactly the records whose handler
raised, the rest are deleted.

``s3_object_keys`` (``functions/batch/aws.py``): the keys of an S3 notification through
Powertools' ``S3Event``, URL-decoded (S3 sends ``+`` for a space).

Powertools and boto3 are imported on first use, not with this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from shared import telemetry
from shared.blocking import run_blocking
from shared.context import Context
from shared.jobs.config import QUEUE_NAME, get_job_settings
from shared.jobs.queue_runtime import RetryLater, deliver
from shared.jobs.worker import Attempt, Outcome
from shared.lifecycle import Keyed
from shared.storage.deadline import storage_deadline

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

log = logging.getLogger("shared.jobs.queue")


# -- S3 and SQS events ---------------------------------------------------------------------


def s3_object_keys(event: dict[str, Any]) -> list[str]:
    """The object keys of an S3 event notification, one per record, decoded. An event
    without records (S3's ``s3:TestEvent``) has none."""
    if not event.get("Records"):
        return []
    from aws_lambda_powertools.utilities.data_classes import S3Event

    return [unquote_plus(record.s3.get_object.key) for record in S3Event(event).records]


def sqs_batch(
    event: dict[str, Any], lambda_context: Any, handle: Callable[[SQSRecord], object]
) -> dict[str, Any]:
    """``{"batchItemFailures": [...]}``: the ids of the records ``handle`` raised for."""
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event, handle, processor, lambda_context))


# -- SQS calls -------------------------------------------------------------------------------


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


def _change_visibility(record: SQSRecord, delay_s: float) -> None:
    _sqs().change_message_visibility(
        QueueUrl=_queue_url(record.event_source_arn),
        ReceiptHandle=record.receipt_handle,
        VisibilityTimeout=min(43_200, max(0, round(delay_s))),
    )


def _send_to_dlq(record: SQSRecord, reason: str) -> bool:
    url = _dlq_url(record.event_source_arn)
    if url is None:
        return False
    _sqs().send_message(
        QueueUrl=url,
        MessageBody=record.body,
        MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]}},
    )
    return True


# -- the jobs queue ---------------------------------------------------------------------------


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

    async def handle(record: SQSRecord) -> None:
        attempt = Attempt(
            max(1, int(record.attributes.approximate_receive_count or 1)), settings.max_attempts
        )
        sent = record.attributes.sent_timestamp
        ctx = Context(deadline=deadline)
        outcome = await deliver(record.body, attempt, ctx, int(sent) / 1000.0 if sent else None)
        with storage_deadline(ctx.remaining()):
            await settle(record, outcome)

    async def settle(record: SQSRecord, outcome: Outcome) -> None:
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
