"""Azure Functions entry of `queue_worker`: Storage-queue trigger on `inference-requests`.

A throttled job (429/503 with Retry-After) is re-enqueued as a new message that becomes visible
after the computed delay, and this one completes; any other retryable failure raises
``RetryLater`` and the host (deployed, or devhost) waits host.json's fixed
``visibilityTimeout`` before the next delivery.
"""

import azure.functions as func

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name="inference-requests", connection="AzureWebJobsStorage")
async def queue_worker(msg: func.QueueMessage) -> None:
    # imported by the first message, not when the worker indexes the app (HTTP cold starts)
    from shared.platform.azure import run_storage_queue_message

    await run_storage_queue_message(msg.get_body(), msg.dequeue_count or 1, msg.insertion_time)
