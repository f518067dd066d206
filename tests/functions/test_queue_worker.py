"""queue_worker adapters fed real trigger shapes.

Azure: the blueprint function called with ``func.QueueMessage`` (body + dequeue_count), as
the host calls it. AWS: the Lambda handler called with an SQS event built from messages
really received from moto's SQS (real receipt handles), the job store in moto's S3.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from azure.functions.queue import QueueMessage

from shared.jobs.queue_runtime import RetryLater
from shared.jobs.store import get_job_store
from shared.storage.queues import get_queue
from shared.storage.s3 import aws_client
from tests.fixtures.core import Handler, chat_answer
from tests.fixtures.events import LambdaContext, load_event
from tests.fixtures.moto import MotoServer
from tests.functions.test_jobs_http import azure_fn

BODY = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}


def line(job_id: str, **extra: Any) -> str:
    return json.dumps(
        {"id": job_id, "method": "POST", "url": "/v1/chat/completions", "body": BODY, **extra}
    )


def by_job(req: httpx2.Request) -> httpx2.Response:
    """The fake endpoint answers per job (the worker sends the job id as x-request-id)."""
    rid = req.headers["x-request-id"]
    if rid.startswith("busy"):
        return httpx2.Response(
            429, headers={"retry-after": "3"}, json={"error": {"message": "full"}}
        )
    if rid.startswith("flaky"):
        return httpx2.Response(500, json={"error": {"message": "boom"}})
    if rid.startswith("rejected"):
        return httpx2.Response(400, json={"error": {"message": "content_filter"}})
    return httpx2.Response(200, json=chat_answer("local-model", f"answer for {rid}"))


@pytest.fixture
def worker_env(job_env: Path, fake_endpoint: Callable[[Handler], None]) -> Path:
    fake_endpoint(by_job)
    return job_env


def status(job_id: str) -> str:
    found = get_job_store().get(job_id)
    assert found is not None
    return found.record.status


async def test_azure_message_succeeds(worker_env: Path) -> None:
    msg = QueueMessage(id="m1", body=line("ok-1").encode(), dequeue_count=1)
    assert await azure_fn("queue_worker")(msg) is None
    assert status("ok-1") == "succeeded"


async def test_azure_retryable_failure_raises_with_visibility_timeout(worker_env: Path) -> None:
    msg = QueueMessage(id="m2", body=line("flaky-1").encode(), dequeue_count=2)
    with pytest.raises(RetryLater) as info:
        await azure_fn("queue_worker")(msg)
    assert 0.75 <= info.value.visibility_timeout <= 1.0  # backoff 0.5 * 2 with jitter
    assert status("flaky-1") == "queued"


async def test_azure_throttled_job_is_sent_again_with_the_retry_after(worker_env: Path) -> None:
    msg = QueueMessage(id="m5", body=line("busy-1").encode(), dequeue_count=4)
    assert await azure_fn("queue_worker")(msg) is None  # acked: the dequeue count is spared
    queue = get_queue("inference-requests")
    assert queue.drain() == []  # type: ignore[attr-defined]  # not visible before 3 s
    spooled = sorted(queue.path.glob("[0-9]*.json"))  # type: ignore[attr-defined]
    assert [json.loads(p.read_text())["id"] for p in spooled] == ["busy-1"]
    assert status("busy-1") == "queued"


async def test_azure_last_dequeue_marks_failed_and_raises_for_the_poison_queue(
    worker_env: Path,
) -> None:
    msg = QueueMessage(id="m3", body=line("flaky-2").encode(), dequeue_count=5)
    with pytest.raises(RetryLater):
        await azure_fn("queue_worker")(msg)
    assert status("flaky-2") == "failed"


async def test_azure_malformed_message_goes_to_poison_at_once_with_reason(
    worker_env: Path,
) -> None:
    raw = json.dumps({"id": "bad-1", "url": "/v1/nope", "body": BODY}).encode()
    msg = QueueMessage(id="m4", body=raw, dequeue_count=1)
    assert await azure_fn("queue_worker")(msg) is None  # acked: no five slow retries
    poisoned = [json.loads(t) for t in get_queue("inference-requests-poison").drain()]  # type: ignore[attr-defined]
    assert len(poisoned) == 1 and poisoned[0]["job_id"] == "bad-1"
    assert (
        "unknown url" in poisoned[0]["reason"]
        and json.loads(poisoned[0]["message"])["url"] == "/v1/nope"
    )
    assert status("bad-1") == "failed"


# -- SQS -----------------------------------------------------------------------------------


@pytest.fixture
def sqs(
    worker_env: Path, moto_env: MotoServer, clean_env: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    from shared.lifecycle import reset_all

    clean_env.delenv("INFER_STORE")
    clean_env.setenv("INFER_BUCKET", "infer-jobs")
    s3, client = aws_client("s3"), aws_client("sqs")
    s3.create_bucket(Bucket="infer-jobs")
    dlq = client.create_queue(QueueName="inference-requests-dlq")["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})
    url = client.create_queue(
        QueueName="inference-requests",
        Attributes={"RedrivePolicy": redrive, "VisibilityTimeout": "60"},
    )["QueueUrl"]
    clean_env.setenv("INFER_QUEUE_URL", url)
    reset_all()
    yield {"client": client, "url": url, "dlq": dlq}
    reset_all()


def sqs_event(client: Any, url: str, bodies: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Send, receive and wrap ``bodies`` as a Lambda SQS event; -> (event, id -> body)."""
    for body in bodies:
        client.send_message(QueueUrl=url, MessageBody=body)
    received: list[dict[str, Any]] = []
    while len(received) < len(bodies):
        got = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=1
        )
        received += got.get("Messages", [])
    template = load_event("sqs_batch")["Records"][0]
    records = []
    for m in received:
        rec = copy.deepcopy(template)
        rec.update(messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"])
        rec["md5OfBody"] = m["MD5OfBody"]
        rec["attributes"]["ApproximateReceiveCount"] = m["Attributes"]["ApproximateReceiveCount"]
        records.append(rec)
    return {"Records": records}, {m["MessageId"]: m["Body"] for m in received}


def test_sqs_batch_reports_exactly_the_failed_ids(
    sqs: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    from functions.queue_worker.aws import handler
    from shared.lifecycle import reset_all

    clean_env.setenv("INFER_JOB_RETRY_BASE_S", "3")
    reset_all()

    client, url = sqs["client"], sqs["url"]
    bodies = [
        line("ok-a"),
        line("flaky-a"),
        line("ok-b"),
        line("rejected-a"),
        "{broken json",
        line("flaky-b"),
    ]
    event, sent = sqs_event(client, url, bodies)
    out = handler(event, LambdaContext(name="queue_worker"))
    failed = {f["itemIdentifier"] for f in out["batchItemFailures"]}
    expected = {mid for mid, body in sent.items() if '"flaky-' in body}
    assert failed == expected and len(failed) == 2
    assert [status(j) for j in ("ok-a", "ok-b", "rejected-a", "flaky-a")] == [
        "succeeded",
        "succeeded",
        "failed",
        "queued",
    ]
    # the job records live in S3
    listed = aws_client("s3").list_objects_v2(Bucket="infer-jobs", Prefix="jobs/")
    keys = {o["Key"] for o in listed["Contents"]}
    assert {"jobs/ok-a.json", "jobs/flaky-a.json"} <= keys
    # the malformed one went straight to the DLQ with its reason
    dead = client.receive_message(
        QueueUrl=sqs["dlq"], MessageAttributeNames=["All"], WaitTimeSeconds=1
    )
    assert [m["Body"] for m in dead["Messages"]] == ["{broken json"]
    assert "not valid JSON" in dead["Messages"][0]["MessageAttributes"]["reason"]["StringValue"]
    # the retried items are hidden for the backoff (2-3 s), not the queue's 60 s
    again: list[dict[str, Any]] = []
    deadline = time.monotonic() + 8
    while len(again) < 2 and time.monotonic() < deadline:
        got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        again += got.get("Messages", [])
    assert sorted(m["MessageId"] for m in again) == sorted(expected)


def test_sqs_last_receive_marks_failed(sqs: dict[str, Any]) -> None:
    from functions.queue_worker.aws import handler

    event, sent = sqs_event(sqs["client"], sqs["url"], [line("flaky-z")])
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "5"
    out = handler(event, LambdaContext(name="queue_worker"))
    assert [f["itemIdentifier"] for f in out["batchItemFailures"]] == list(sent)
    assert status("flaky-z") == "failed"
