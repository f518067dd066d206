"""The AWS calls of paths the other function tests do not reach, made by the real Lambda
handlers against moto / the SageMaker simulator.

The IAM check itself runs after every test of the suite (``tests/fixtures/iam.py``): each
call a handler made must be allowed by that function's role in template.yaml. Each test here
also asserts which calls were made, so the check had something to check: a throttled job
sent again (GetQueueUrl + SendMessage on the jobs queue), an output upload aborted
(AbortMultipartUpload), SageMaker buffered and streamed calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.batch import gpusim_backend, make_input
from tests.fixtures.events import LambdaContext, load_event
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.identity import Server
from tests.fixtures.moto import MotoServer
from tests.iam_policy import Call


@pytest.fixture(autouse=True)
def usable_event_loop_after() -> Iterator[None]:
    """asyncio.run (here, or inside Powertools' batch processor) leaves the main thread with
    no event loop; Mangum's handlers, called by later tests, need one to exist."""
    yield
    asyncio.set_event_loop_policy(None)


def made(calls: list[Call], function: str) -> set[str]:
    return {str(c) for c in calls if c.function == function}


# -- SageMaker ------------------------------------------------------------------------------


def sagemaker_backend(url: str) -> str:
    return json.dumps([{"name": "sm", "kind": "sagemaker", "endpoint_name": "llm-endpoint",
                        "region": "us-east-1", "endpoint_url": url}])  # fmt: skip


def http_event(path: str, body: dict[str, Any]) -> dict[str, Any]:
    event = load_event("apigw_v2_chat")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["routeKey"] = event["requestContext"]["routeKey"] = f"POST {path}"
    event["body"] = json.dumps(body)
    event["headers"]["content-length"] = str(len(event["body"]))
    return event


@pytest.mark.usefixtures("cloud_env")
def test_sagemaker_calls_of_the_http_functions(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, aws_permissions: list[Call]
) -> None:
    from functions.chat.aws import handler as chat
    from shared.lifecycle import reset_all

    monkeypatch.setenv("INFER_BACKENDS", sagemaker_backend(cloudsim.url))
    reset_all()
    messages = [{"role": "user", "content": "hi"}]
    plain = chat(http_event("/v1/chat/completions", {"model": "m", "messages": messages}),
                 LambdaContext())  # fmt: skip
    assert plain["statusCode"] == 200, plain["body"]
    streamed = chat(
        http_event("/v1/chat/completions", {"model": "m", "messages": messages, "stream": True}),
        LambdaContext(),
    )
    assert streamed["statusCode"] == 200 and streamed["body"].endswith("data: [DONE]\n\n")
    assert made(aws_permissions, "ChatFunction") == {
        "sagemaker-runtime.InvokeEndpoint",
        "sagemaker-runtime.InvokeEndpointWithResponseStream",
    }


# -- queue worker: a throttled job is sent again ---------------------------------------------


@pytest.fixture
def sqs_jobs(
    clean_env: pytest.MonkeyPatch, moto_env: MotoServer, gpusim: Gpusim
) -> Iterator[dict[str, Any]]:
    from shared.lifecycle import reset_all
    from shared.storage.s3 import aws_client

    for key in ("AzureWebJobsStorage", "INFER_STORE"):
        clean_env.delenv(key, raising=False)
    clean_env.setenv("INFER_BUCKET", "jobs-bucket")
    clean_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    clean_env.setenv("INFER_MAX_RETRIES", "0")
    s3, sqs = aws_client("s3"), aws_client("sqs")
    s3.create_bucket(Bucket="jobs-bucket")
    dlq = sqs.create_queue(QueueName="requests-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})
    url = sqs.create_queue(QueueName="requests", Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    clean_env.setenv("INFER_QUEUE_URL", url)
    reset_all()
    yield {"sqs": sqs, "url": url}
    reset_all()


def test_throttled_job_is_sent_again_on_sqs(
    sqs_jobs: dict[str, Any], gpusim: Gpusim, aws_permissions: list[Call]
) -> None:
    from functions.queue_worker.aws import handler

    sqs, url = sqs_jobs["sqs"], sqs_jobs["url"]
    gpusim.set_fault("429", -1, retry_after=30)
    chat = {"model": "local-model", "messages": [{"role": "user", "content": "x"}]}
    body = json.dumps({"id": "busy-job", "method": "POST", "url": "/v1/chat/completions",
                       "body": chat})  # fmt: skip
    sqs.send_message(QueueUrl=url, MessageBody=body)
    (m,) = sqs.receive_message(QueueUrl=url, AttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    record = load_event("sqs_batch")["Records"][0]
    record.update(messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"],
                  eventSourceARN="arn:aws:sqs:us-east-1:123456789012:requests")  # fmt: skip
    out = handler({"Records": [record]}, LambdaContext(name="queue_worker"))
    assert out == {"batchItemFailures": []}  # acked: the job was sent again with a delay
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"
    assert {"sqs.GetQueueUrl", "sqs.SendMessage"} <= made(aws_permissions, "QueueWorkerFunction")


# -- batch: an output upload that fails is aborted -------------------------------------------


def test_failed_output_upload_is_aborted(
    batch_env: pytest.MonkeyPatch,
    moto_env: MotoServer,
    gpusim: Gpusim,
    aws_permissions: list[Call],
    lambda_context: Callable[..., LambdaContext],
) -> None:
    """A part file gone before the merge: the multipart upload already begun is aborted."""
    from functions.batch.aws import handler, shard_handler
    from shared.storage.s3 import S3Store, aws_client

    batch_env.setenv("INFER_BUCKET", "batch-bucket")
    batch_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    batch_env.setenv("INFER_BATCH_SHARD_BYTES", "3000")
    batch_env.setattr(S3Store, "part_bytes", 1024)  # a multipart upload from the first KiB
    s3, sqs = aws_client("s3"), aws_client("sqs")
    s3.create_bucket(Bucket="batch-bucket")
    url = sqs.create_queue(QueueName="shards")["QueueUrl"]
    batch_env.setenv("INFER_BATCH_QUEUE_URL", url)
    data, _, _ = make_input(40, prefix="ab")
    s3.put_object(Bucket="batch-bucket", Key="batch-in/abort.jsonl", Body=data)
    event = json.loads(json.dumps(load_event("s3_put")).replace("daily+run+%282025%29", "abort"))
    event["Records"][0]["s3"]["bucket"]["name"] = "batch-bucket"
    assert "shards enqueued" in handler(event, lambda_context(60, "batch"))["outcomes"][0]
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in msgs]
    *first, last = sorted(records, key=lambda r: json.loads(r["body"])["shard"])
    assert shard_handler({"Records": first}, lambda_context(60, "batch")) == {
        "batchItemFailures": []
    }
    parts = s3.list_objects_v2(Bucket="batch-bucket", Prefix="batch-work/abort/")["Contents"]
    victim = max(o["Key"] for o in parts if o["Key"].endswith(".out.jsonl"))  # read late
    s3.delete_object(Bucket="batch-bucket", Key=victim)
    out = shard_handler({"Records": [last]}, lambda_context(60, "batch"))
    assert out == {"batchItemFailures": [{"itemIdentifier": last["messageId"]}]}
    assert s3.list_multipart_uploads(Bucket="batch-bucket").get("Uploads", []) == []
    assert "s3.AbortMultipartUpload" in made(aws_permissions, "BatchShardFunction")


# -- jobs API and worker on S3 + SQS, a body too large for SQS (claim-check) ------------------


def test_jobs_api_and_worker_on_s3_and_sqs(
    sqs_jobs: dict[str, Any], aws_permissions: list[Call]
) -> None:
    from functions.jobs.aws import handler as jobs
    from functions.queue_worker.aws import handler as worker

    sqs, url = sqs_jobs["sqs"], sqs_jobs["url"]
    long = "x" * 300_000  # 300 KB, one token for gpusim: more than an SQS message holds
    line = {"method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "local-model", "max_tokens": 4,
                     "messages": [{"role": "user", "content": long}]}}  # fmt: skip
    post = http_event("/v1/jobs", line)
    out = jobs(post, LambdaContext(name="jobs"))
    assert out["statusCode"] == 202, out["body"]
    job_id = json.loads(out["body"])["id"]
    get = load_event("apigw_v2_chat")
    get["rawPath"] = f"/v1/jobs/{job_id}"
    get["routeKey"] = get["requestContext"]["routeKey"] = "GET /v1/jobs/{id}"
    get["requestContext"]["http"].update(method="GET", path=f"/v1/jobs/{job_id}")
    get.pop("body", None)
    assert json.loads(jobs(get, LambdaContext(name="jobs"))["body"])["status"] == "queued"
    (m,) = sqs.receive_message(QueueUrl=url, AttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert "body_ref" in json.loads(m["Body"])
    record = load_event("sqs_batch")["Records"][0]
    record.update(messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"],
                  eventSourceARN="arn:aws:sqs:us-east-1:123456789012:requests")  # fmt: skip
    assert worker({"Records": [record]}, LambdaContext(name="queue_worker")) == {
        "batchItemFailures": []
    }
    asyncio.set_event_loop_policy(None)  # two functions in one process (see the fixture)
    assert json.loads(jobs(get, LambdaContext(name="jobs"))["body"])["status"] == "succeeded"
    assert {"s3.PutObject", "s3.GetObject", "sqs.SendMessage"} <= made(
        aws_permissions, "JobsFunction"
    )
