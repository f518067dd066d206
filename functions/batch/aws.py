"""AWS Lambda entries of `batch`: S3 ObjectCreated on `batch-in/*.jsonl`, and the SQS
queue of shard/continuation messages (``ReportBatchItemFailures``). The events are parsed
with Powertools (``shared.platform.aws``: ``S3Event``, and its ``BatchProcessor`` for the
partial batch response).

The deadline is Lambda's remaining time (capped by ``INFER_BATCH_TIME_BUDGET_S``). One event
loop per process is reused across warm invocations, so the HTTP connection pool survives.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from shared.batch import get_batch, invocation_context
from shared.context import lambda_remaining_s
from shared.lifecycle import Singleton
from shared.platform.aws import s3_object_keys, sqs_batch
from shared.telemetry import flush_sync

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

log = logging.getLogger("functions.batch")
T = TypeVar("T")


def _close(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_running():
        loop.close()


_loop = Singleton(asyncio.new_event_loop, close=_close, stale=lambda loop: loop.is_closed())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return _loop.get().run_until_complete(coro)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """S3 event: one record per created object (keys decoded by ``s3_object_keys``)."""
    outcomes = []
    for key in s3_object_keys(event):
        rid = getattr(context, "aws_request_id", None)
        ctx = invocation_context(remaining_s=lambda_remaining_s(context), request_id=rid)
        try:
            outcome = _run(get_batch().start(key, ctx))
        finally:
            flush_sync(ctx)
        log.info("batch %s: %s", key, outcome)
        outcomes.append(outcome)
    return {"outcomes": outcomes}


def shard_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """SQS event of ``batch_shard`` messages; failed ones are reported, the rest deleted."""

    def resume(record: SQSRecord) -> None:
        try:
            message = json.loads(record.body)
            ctx = invocation_context(remaining_s=lambda_remaining_s(context))
            try:
                log.info("batch shard: %s", _run(get_batch().resume(message, ctx)))
            finally:
                flush_sync(ctx)
        except Exception:
            log.exception("batch shard message %s failed", record.message_id)
            raise

    return sqs_batch(event, context, resume)
