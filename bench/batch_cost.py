"""Storage operations and CPU per batch line, on Azure (Azurite) and AWS (moto S3).

The batch engine (``shared.batch``) runs in this process over real object stores, so the
storage calls are counted at the SDK boundary (bench/storage_ops.py) and the CPU time is
this process's; the endpoint (gpusim), Azurite and moto are separate processes. Called by
bench/batch.py (``--cost-lines``), reported per line next to the endpoint capacity the same
run measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import storage_ops
from tests.fixtures.azurite import ACCOUNT, ACCOUNT_KEY, azurite_argv
from tests.fixtures.moto import AWS_ENV
from tests.fixtures.procs import PYTHON, ServerProcess, free_port


def _line(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "local-model", "messages": [{"role": "user", "content": f"item {i}"}]},
    }


async def _run(stores: Any, n: int) -> dict[str, Any]:
    from shared.batch.runner import Batch
    from shared.context import Context

    data = "".join(json.dumps(_line(i)) + "\n" for i in range(n)).encode()
    stores.inp.put("cost.jsonl", data)
    sent: list[dict[str, Any]] = []
    batch = Batch(stores=stores, send=sent.append)
    before = storage_ops.snapshot()
    t0 = time.monotonic()
    outcome = await batch.start("batch-in/cost.jsonl", Context.with_timeout(3600))
    elapsed = time.monotonic() - t0
    after = storage_ops.snapshot()
    ops = {
        k: round((v - before["ops"].get(k, 0)) / n, 4)
        for k, v in sorted(after["ops"].items())
        if v - before["ops"].get(k, 0)
    }
    return {
        "lines": n,
        "outcome": str(outcome),
        "seconds": round(elapsed, 2),
        "rps": round(n / elapsed, 2),
        "storage_ops_per_line": ops,
        "total_ops_per_line": round(sum(ops.values()), 4),
        "cpu_ms_per_line": round((after["cpu_s"] - before["cpu_s"]) * 1000 / n, 3),
    }


def azure(n: int) -> dict[str, Any]:
    from shared.batch.state import Stores
    from shared.lifecycle import reset_all
    from shared.storage.azure_blob import AzureBlobStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-az-"))
    blob, queue, table = free_port(), free_port(), free_port()
    proc = ServerProcess(
        azurite_argv(blob, queue, table, tmp), blob, ready_path=None, name="bench-batch-azurite"
    ).start()
    os.environ["AzureWebJobsStorage"] = (  # noqa: SIM112 - the Functions setting's name
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue}/{ACCOUNT};"
    )
    storage_ops.install_azure()
    reset_all()
    try:
        suffix = uuid.uuid4().hex[:6]
        stores = Stores(AzureBlobStore(f"batch-in-{suffix}"), AzureBlobStore(f"batch-out-{suffix}"),
                        AzureBlobStore(f"batch-work-{suffix}"))  # fmt: skip
        return asyncio.run(_run(stores, n))
    finally:
        os.environ.pop("AzureWebJobsStorage", None)
        reset_all()
        proc.kill()


def aws(n: int) -> dict[str, Any]:
    from shared.batch.state import Stores
    from shared.lifecycle import reset_all
    from shared.storage.s3 import S3Store, aws_client

    port = free_port()
    proc = ServerProcess(
        [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port, ready_path="/moto-api/", name="bench-batch-moto",
    ).start()  # fmt: skip
    saved = {k: os.environ.get(k) for k in (*AWS_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL": proc.url})
    storage_ops.install_aws()
    reset_all()
    try:
        bucket = "bench-batch-" + uuid.uuid4().hex[:6]
        aws_client("s3").create_bucket(Bucket=bucket)
        stores = Stores(S3Store(bucket, "batch-in"), S3Store(bucket, "batch-out"),
                        S3Store(bucket, "batch-work"))  # fmt: skip
        return asyncio.run(_run(stores, n))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_all()
        proc.stop()


def storage_cost(n: int) -> dict[str, Any]:
    return {"azure": azure(n), "aws": aws(n)}
