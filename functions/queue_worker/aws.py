"""AWS Lambda entry of `queue_worker`: SQS event source with ReportBatchItemFailures."""

from typing import Any

from shared.platform.aws import run_sqs_batch


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_sqs_batch(event, context)
