"""Azure Functions entry of `batch`: blob trigger on `batch-in/{name}.jsonl`, shard queue.

Deployed, the trigger's source is Event Grid (fast, no container scans);
``INFER_BATCH_BLOB_SOURCE=LogsAndContainerScan`` selects the polling trigger instead (read
once, when the module is indexed). devhost scans Azurite either way.

The input is not read through the trigger's stream: the engine downloads it by byte ranges
(``download_blob(offset=).chunks()``), so a redelivery or a shard resumes mid-file.
"""

import logging
import os

import azure.functions as func

from shared.batch import get_batch, invocation_context
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
async def batch(blob: func.InputStream) -> None:
    ctx = invocation_context()
    try:
        outcome = await get_batch().start(blob.name or "", ctx)
    finally:
        await flush(ctx)
    log.info("batch %s: %s", blob.name, outcome)


@bp.queue_trigger(arg_name="msg", queue_name="batch-shards", connection="AzureWebJobsStorage")
async def batch_shard(msg: func.QueueMessage) -> None:
    ctx = invocation_context()
    try:
        outcome = await get_batch().resume(msg.get_json(), ctx)
    finally:
        await flush(ctx)
    log.info("batch shard message %s: %s", msg.id, outcome)
