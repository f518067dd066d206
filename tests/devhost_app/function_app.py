"""A small function app that exercises devhost's triggers (tests only).

Queue and blob functions record what they saw as JSON files in ``$DEVHOST_TEST_OUT`` so the
tests can assert behaviour across devhost restarts. Queue and container names come from app
settings (``%DEVHOST_TEST_QUEUE%``) so that every test gets its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import azure.functions as func
from azurefunctions.extensions.bindings.blob import BlobClient
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, StreamingResponse

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
bp = func.Blueprint()


def _out() -> Path:
    return Path(os.environ["DEVHOST_TEST_OUT"])


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class RetryLater(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(f"retry in {delay}s")
        self.visibility_timeout = delay


@bp.route(route="echo/{id}", methods=["GET", "POST"])
async def echo(req: Request) -> JSONResponse:
    body = await req.body()
    return JSONResponse(
        {
            "id": req.path_params["id"],
            "method": req.method,
            "query": dict(req.query_params),
            "body": body.decode(),
        }
    )


@bp.route(route="items/{id?}", methods=["GET"])
async def items(req: Request) -> JSONResponse:
    return JSONResponse({"params": dict(req.path_params)})


@bp.route(route="files/{*path}", methods=["GET"])
async def files(req: Request) -> JSONResponse:
    return JSONResponse({"params": dict(req.path_params)})


@bp.route(route="stream", methods=["GET"])
async def stream(req: Request) -> StreamingResponse:
    n = int(req.query_params.get("n", "3"))
    pause = float(req.query_params.get("pause", "0.4"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            yield f"data: {i} {time.time()}\n\n".encode()
            await asyncio.sleep(pause)

    return StreamingResponse(chunks(), media_type="text/event-stream")


@bp.route(route="upload", methods=["POST"])
async def upload(req: Request) -> JSONResponse:
    total = 0
    async for chunk in req.stream():
        total += len(chunk)
    return JSONResponse({"bytes": total})


@bp.route(route="native/{name}", methods=["POST"])
def native(req: func.HttpRequest) -> func.HttpResponse:
    payload = {
        "name": req.route_params["name"],
        "q": req.params.get("q"),
        "body": req.get_body().decode(),
        "header": req.headers.get("x-test"),
    }
    return func.HttpResponse(
        json.dumps(payload), status_code=201, mimetype="application/json", headers={"X-Native": "1"}
    )


@bp.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret-detail-that-must-not-leak")


@bp.route(route="settings", methods=["GET"])
def settings(req: func.HttpRequest) -> func.HttpResponse:
    keys = ("DEVHOST_TEST_FROM_SETTINGS", "DEVHOST_TEST_OVERRIDDEN")
    return func.HttpResponse(json.dumps({k: os.environ.get(k) for k in keys}))


@bp.queue_trigger(
    arg_name="msg", queue_name="%DEVHOST_TEST_QUEUE%", connection="AzureWebJobsStorage"
)
@bp.queue_output(
    arg_name="out", queue_name="%DEVHOST_TEST_QUEUE%-out", connection="AzureWebJobsStorage"
)
async def work(msg: func.QueueMessage, out: func.Out[str]) -> None:
    """Body ``{"key", "fail"?: n, "sleep"?: s, "delay"?: s, "forward"?: bool}``.

    Fails while ``dequeue_count <= fail``; ``delay`` sets the exception's visibility_timeout
    (which the host, and so devhost, ignores).
    """
    job = json.loads(msg.get_body())
    key = job["key"]
    record = {
        "dequeue_count": msg.dequeue_count,
        "id": msg.id,
        "t": time.time(),
        "pid": os.getpid(),
        "type": f"{type(msg).__module__}.{type(msg).__qualname__}",
        "pop_receipt": msg.pop_receipt,
        "insertion_time": None if msg.insertion_time is None else msg.insertion_time.isoformat(),
        "expiration_time": None if msg.expiration_time is None else msg.expiration_time.isoformat(),
        "time_next_visible": None
        if msg.time_next_visible is None
        else msg.time_next_visible.isoformat(),
    }
    _append(_out() / f"{key}.attempts", record)
    if job.get("sleep"):
        await asyncio.sleep(float(job["sleep"]))
    if msg.dequeue_count <= int(job.get("fail", 0)):
        if "delay" in job:
            raise RetryLater(float(job["delay"]))
        raise RuntimeError(f"told to fail attempt {msg.dequeue_count}")
    if job.get("forward"):
        out.set(json.dumps({"forwarded": key}))
    _append(_out() / f"{key}.done", {**record, "body": msg.get_body().decode()})


@bp.blob_trigger(
    arg_name="blob", path="%DEVHOST_TEST_CONTAINER%/{name}.jsonl", connection="AzureWebJobsStorage"
)
@bp.blob_output(
    arg_name="count",
    path="%DEVHOST_TEST_CONTAINER%-out/{name}.count",
    connection="AzureWebJobsStorage",
)
def batch(blob: func.InputStream, count: func.Out[str]) -> None:
    """Counts lines; blobs named ``fail*`` always fail (the worker sends the whole blob)."""
    data = blob.read()
    digest = hashlib.sha256(data)
    lines = data.count(b"\n")
    stem = blob.name.rsplit("/", 1)[-1] if blob.name else "?"
    _append(
        _out() / f"blob-{stem}.calls",
        {
            "name": blob.name,
            "length": blob.length,
            "uri": blob.uri,
            "lines": lines,
            "sha256": digest.hexdigest(),
            "stream_type": f"{type(blob).__module__}.{type(blob).__qualname__}",
            "properties": blob.blob_properties,
        },
    )
    if stem.startswith("fail"):
        raise RuntimeError("told to fail")
    count.set(str(lines))


@bp.blob_trigger(
    arg_name="client", path="%DEVHOST_TEST_CONTAINER%/{name}.big", connection="AzureWebJobsStorage"
)
def big(client: BlobClient) -> None:
    """SDK-type binding: reads the blob by 1 MiB ranges and records the largest one held."""
    digest = hashlib.sha256()
    total = largest = 0
    size = int(client.get_blob_properties().size)
    for offset in range(0, size, 1 << 20):
        chunk = client.download_blob(offset=offset, length=1 << 20).readall()
        digest.update(chunk)
        total += len(chunk)
        largest = max(largest, len(chunk))
    _append(
        _out() / f"blob-{client.blob_name}.calls",
        {
            "type": f"{type(client).__module__}.{type(client).__qualname__}",
            "container": client.container_name,
            "blob": client.blob_name,
            "bytes": total,
            "largest_chunk": largest,
            "sha256": digest.hexdigest(),
        },
    )


app.register_functions(bp)
