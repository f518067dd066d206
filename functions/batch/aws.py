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
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from shared.batch import get_batch, invocation_context
from shared.context import lambda_remaining_s
from shared.platform.aws import s3_object_keys, sqs_batch
from shared.telemetry import flush_sync

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

log = logging.getLogger("functions.batch")
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
        loop = _loop
    return loop.run_until_complete(coro)


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
