"""batch adapters fed real trigger shapes: the Azure blob trigger function (an SDK-type
``BlobRef``, built by its registered converter from ModelBindingData as the worker builds it)
against Azurite, and the Lambda S3 / SQS handlers with real S3 event shapes against moto; the model
is gpusim.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from functions.batch.blobref import BlobRef
from tests.fixtures.azurite import Azurite
from tests.fixtures.batch import gpusim_backend, make_input, read_jsonl
from tests.fixtures.events import LambdaContext, load_event
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.moto import MotoServer
from tools.devhost.convert import blob_sdk_arg

_FUNCS: dict[str, Any] = {}


def azure_fn(name: str) -> Any:
    if not _FUNCS:
        from tests.e2e.batch_app import app

        for fn in app.get_functions():
            _FUNCS[fn.get_function_name()] = fn
    return _FUNCS[name]


def test_blob_trigger_binding_is_batch_in_with_event_grid_source() -> None:
    bindings = azure_fn("batch").get_bindings_dict()["bindings"]
    trigger = next(b for b in bindings if b["type"] == "blobTrigger")
    assert trigger["path"] == "batch-in/{name}.jsonl"
    assert trigger["connection"] == "AzureWebJobsStorage"
    assert trigger["source"] == "EventGrid"
    shard = azure_fn("batch_shard").get_bindings_dict()["bindings"][0]
    assert (shard["type"], shard["queueName"]) == ("queueTrigger", "batch-shards")


def blob_trigger_arg(container: str, name: str) -> Any:
    """The deferred (SDK-type) argument: a client naming the blob, no content."""
    return blob_sdk_arg(
        BlobRef,
        binding="blobTrigger",
        connection="AzureWebJobsStorage",
        container=container,
        name=name,
        trigger_metadata={},
    )


def test_blob_trigger_parameter_is_an_sdk_type_so_no_content_is_sent() -> None:
    from azurefunctions.extensions.base import meta

    from tools.devhost.convert import is_sdk_type
    from tools.devhost.invoke import annotation_of

    fn = azure_fn("batch").get_user_function()
    assert annotation_of(fn, "blob") is BlobRef
    # What the worker checks at indexing (deferred binding) and which converter it then calls
    assert is_sdk_type(BlobRef)
    registry = meta.get_binding_registry()
    assert registry.get("blobTrigger").check_input_type_annotation(BlobRef)
    ref = blob_trigger_arg("batch-in", "x.jsonl")
    assert isinstance(ref, BlobRef) and ref.name == "batch-in/x.jsonl"


def check_outputs(out: bytes, err: bytes, good: set[str], bad: int) -> None:
    outs, errs = read_jsonl(out), read_jsonl(err)
    ids = Counter(r["custom_id"] for r in outs + errs)
    assert {c: ids[c] for c in good if ids[c] != 1} == {}
    assert len(outs) == len(good) and len(errs) == bad
    assert all(r["response"]["body"]["object"] == "chat.completion" for r in outs)


@pytest.fixture
def azure_env(batch_env: pytest.MonkeyPatch, azurite: Azurite, gpusim: Gpusim) -> Azurite:
    batch_env.setenv("AzureWebJobsStorage", azurite.connection_string)
    batch_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    return azurite


def test_azure_blob_trigger_writes_output_errors_and_status(azure_env: Azurite) -> None:
    data, good, bad = make_input(60, bad_every=15, prefix="az")
    svc = azure_env.blob_service()
    container = svc.get_container_client("batch-in")
    if not container.exists():
        container.create_container()
    container.upload_blob("fn-azure.jsonl", data, overwrite=True)
    trigger = blob_trigger_arg("batch-in", "fn-azure.jsonl")
    asyncio.run(azure_fn("batch").get_user_function()(trigger))
    out_c = svc.get_container_client("batch-out")
    out = out_c.download_blob("fn-azure.output.jsonl").readall()
    err = out_c.download_blob("fn-azure.errors.jsonl").readall()
    check_outputs(out, err, good, bad)
    status = json.loads(out_c.download_blob("fn-azure.status.json").readall())
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 64, "completed": 60, "failed": 4}
    assert status["usage"]["total_tokens"] > 0
    assert list(svc.get_container_client("batch-work").list_blobs()) == []


def test_azure_shard_queue_messages_run_their_shards(
    azure_env: Azurite, batch_env: pytest.MonkeyPatch
) -> None:
    from shared.lifecycle import reset_all

    batch_env.setenv("INFER_BATCH_SHARD_BYTES", "3000")
    reset_all()
    data, good, bad = make_input(40, prefix="sh")
    svc = azure_env.blob_service()
    c = svc.get_container_client("batch-in")
    if not c.exists():
        c.create_container()
    c.upload_blob("fn-shards.jsonl", data, overwrite=True)
    trigger = blob_trigger_arg("batch-in", "fn-shards.jsonl")
    asyncio.run(azure_fn("batch").get_user_function()(trigger))
    queue = azure_env.queue_service().get_queue_client("batch-shards")
    received = list(queue.receive_messages(messages_per_page=32, visibility_timeout=60))
    assert len(received) == -(-len(data) // 3000)
    shard_fn = azure_fn("batch_shard").get_user_function()
    for m in received:
        body = base64.b64decode(m.content)  # the trigger's base64 encoding
        asyncio.run(shard_fn(QueueMessage(id=m.id, body=body, dequeue_count=1)))
        queue.delete_message(m)
    out_c = svc.get_container_client("batch-out")
    check_outputs(
        out_c.download_blob("fn-shards.output.jsonl").readall(),
        out_c.download_blob("fn-shards.errors.jsonl").readall(),
        good,
        bad,
    )


BUCKET = "infer-bucket"


@pytest.fixture
def aws_env(batch_env: pytest.MonkeyPatch, moto_env: MotoServer, gpusim: Gpusim) -> Any:
    from shared.storage.s3 import aws_client

    batch_env.setenv("INFER_BUCKET", BUCKET)
    batch_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    s3 = aws_client("s3")
    s3.create_bucket(Bucket=BUCKET)
    sqs = aws_client("sqs")
    url = sqs.create_queue(QueueName="batch-shards")["QueueUrl"]
    batch_env.setenv("INFER_BATCH_QUEUE_URL", url)
    return s3, sqs, url


def test_s3_put_event_with_an_encoded_key_runs_the_batch(
    aws_env: Any, lambda_context: Callable[..., LambdaContext]
) -> None:
    from functions.batch.aws import handler

    s3, _, _ = aws_env
    data, good, bad = make_input(50, bad_every=10, prefix="s3")
    s3.put_object(Bucket=BUCKET, Key="batch-in/daily run (2025).jsonl", Body=data)
    result = handler(load_event("s3_put"), lambda_context(60, "batch"))
    assert result["outcomes"][0].startswith("daily run (2025): completed")
    get = s3.get_object
    out = get(Bucket=BUCKET, Key="batch-out/daily run (2025).output.jsonl")["Body"].read()
    err = get(Bucket=BUCKET, Key="batch-out/daily run (2025).errors.jsonl")["Body"].read()
    check_outputs(out, err, good, bad)
    status = json.loads(
        get(Bucket=BUCKET, Key="batch-out/daily run (2025).status.json")["Body"].read()
    )
    assert status["status"] == "completed"
    assert status["request_counts"]["failed"] == bad


def test_s3_event_for_another_file_is_ignored(
    aws_env: Any, lambda_context: Callable[..., LambdaContext]
) -> None:
    from functions.batch.aws import handler

    result = handler(load_event("s3_put_other"), lambda_context(10, "batch"))
    assert result["outcomes"][0].startswith("ignored")


def test_s3_test_event_without_records_starts_nothing(
    lambda_context: Callable[..., LambdaContext],
) -> None:
    """S3 sends ``s3:TestEvent`` (no ``Records``) when a notification is configured."""
    from functions.batch.aws import handler

    event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2025-10-19T12:00:00Z",
             "Bucket": "infer-bucket", "RequestId": "5582815E1AEA5ADF"}  # fmt: skip
    assert handler(event, lambda_context(10, "batch")) == {"outcomes": []}


def test_sqs_shard_messages_from_a_sharded_s3_file_merge_once(
    aws_env: Any, lambda_context: Callable[..., LambdaContext], batch_env: pytest.MonkeyPatch
) -> None:
    from functions.batch.aws import handler, shard_handler
    from shared.lifecycle import reset_all

    batch_env.setenv("INFER_BATCH_SHARD_BYTES", "2500")
    reset_all()
    s3, sqs, url = aws_env
    data, good, bad = make_input(40, bad_every=8, prefix="sq")
    s3.put_object(Bucket=BUCKET, Key="batch-in/sharded.jsonl", Body=data)
    event = json.loads(json.dumps(load_event("s3_put")).replace(
        "daily+run+%282025%29", "sharded"))  # fmt: skip
    assert "shards enqueued" in handler(event, lambda_context(60, "batch"))["outcomes"][0]
    records = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        records += [
            {"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
             "eventSource": "aws:sqs", "attributes": {"ApproximateReceiveCount": "1"}}
            for m in got
        ]  # fmt: skip
    assert len(records) == -(-len(data) // 2500)
    # a duplicate delivery, and a message that is not a shard: only that one is reported
    broken = {**records[0], "messageId": "not-a-shard", "body": "{not json"}
    batch = [*records[:1], broken, *records[1:], records[0]]
    result = shard_handler({"Records": batch}, lambda_context(60, "batch"))
    assert result == {"batchItemFailures": [{"itemIdentifier": "not-a-shard"}]}
    get = s3.get_object
    check_outputs(
        get(Bucket=BUCKET, Key="batch-out/sharded.output.jsonl")["Body"].read(),
        get(Bucket=BUCKET, Key="batch-out/sharded.errors.jsonl")["Body"].read(),
        good,
        bad,
    )
