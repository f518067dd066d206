"""Azure Functions entry of `queue_worker`: Storage-queue trigger on `inference-requests`.

A retryable failure raises ``RetryLater``; the deployed host then waits host.json
``visibilityTimeout`` (devhost honours the exception's ``visibility_timeout``, the backoff).
"""

import azure.functions as func

from shared.jobs.queue_runtime import run_storage_queue_message

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name="inference-requests", connection="AzureWebJobsStorage")
async def queue_worker(msg: func.QueueMessage) -> None:
    await run_storage_queue_message(msg.get_body(), msg.dequeue_count or 1, msg.insertion_time)
