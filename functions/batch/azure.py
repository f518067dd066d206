"""Azure Functions entry of `batch`: blob trigger on `batch-in/{name}.jsonl`, shard queue.

Deployed, the trigger's source is Event Grid (fast, no container scans);
``INFER_BATCH_BLOB_SOURCE=LogsAndContainerScan`` selects the polling trigger instead (read
once, when the module is indexed). devhost scans Azurite either way.

The trigger parameter is an SDK type (``BlobRef``, a deferred binding): the host sends only
the blob's name and connection, never its content. (With ``func.InputStream`` the Python
worker receives the whole blob in memory before the function starts, so a large batch file
could run an instance out of memory.) The engine then streams the input by byte ranges
(``download_blob(offset=).chunks()``), so a redelivery or a shard resumes mid-file and at
most one chunk per reader is held.
"""

import logging
import os

import azure.functions as func

from functions.batch.blobref import BlobRef
from shared.telemetry import flush

log = logging.getLogger("functions.batch")

bp = func.Blueprint()

_SOURCE = (
    func.BlobSource.LOGS_AND_CONTAINER_SCAN
    if os.environ.get("INFER_BATCH_BLOB_SOURCE", "").lower() == "logsandcontainerscan"
    else func.BlobSource.EVENT_GRID
)


@bp.blob_trigger(
    arg_name="blob",
    path="batch-in/{name}.jsonl",
    connection="AzureWebJobsStorage",
    source=_SOURCE,
)
async def batch(blob: BlobRef) -> None:
    # shared.batch is imported by the first batch, not when the worker indexes the app
    from shared.batch import get_batch, invocation_context

    ctx = invocation_context()
    try:
        outcome = await get_batch().start(blob.name, ctx)
    finally:
        await flush(ctx)
    log.info("batch %s: %s", blob.name, outcome)


@bp.queue_trigger(arg_name="msg", queue_name="batch-shards", connection="AzureWebJobsStorage")
async def batch_shard(msg: func.QueueMessage) -> None:
    from shared.batch import get_batch, invocation_context

    ctx = invocation_context()
    try:
        outcome = await get_batch().resume(msg.get_json(), ctx)
    finally:
        await flush(ctx)
    log.info("batch shard message %s: %s", msg.id, outcome)
