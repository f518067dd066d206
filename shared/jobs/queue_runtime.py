"""One delivery of a job message, the part both platforms' queue glue shares.

``deliver(body, attempt, ctx, enqueued_at)`` records how long the message waited in the
queue, runs the worker (``shared.jobs.worker.process_message``) and logs the ``Outcome`` it
decided: ack, retry, defer or poison. Carrying that decision out is platform code, kept in
one module per platform and imported only by the adapters:

- ``shared.platform.azure``: the Storage-queue trigger (the Functions host's semantics).
- ``shared.platform.aws``: the SQS event source (Powertools' batch processor, SQS calls).

``RetryLater`` is what both raise for a delivery that must come back later: the Functions
host redelivers the message, and on SQS the record is reported in ``batchItemFailures``.
"""

from __future__ import annotations

import logging
import time

from shared import telemetry
from shared.context import Context
from shared.jobs.config import QUEUE_NAME
from shared.jobs.worker import Attempt, Outcome, process_message

log = logging.getLogger("shared.jobs.queue")


class RetryLater(Exception):
    """Raised to make the platform redeliver the message after ``visibility_timeout`` s."""

    def __init__(self, reason: str, visibility_timeout: float, job_id: str | None = None) -> None:
        super().__init__(f"job {job_id}: retry in {visibility_timeout:.1f}s: {reason}")
        self.visibility_timeout = visibility_timeout
        self.job_id = job_id


async def deliver(
    body: bytes | str, attempt: Attempt, ctx: Context, enqueued_at: float | None = None
) -> Outcome:
    """One delivery: ``enqueued_at`` (unix seconds, when the platform says) feeds the
    queue-time metric; the returned ``Outcome`` is for the platform glue to carry out."""
    if enqueued_at is not None:
        telemetry.record_queue_time(time.time() - enqueued_at, QUEUE_NAME)
    outcome = await process_message(body, attempt, ctx)
    _log(outcome, attempt)
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
