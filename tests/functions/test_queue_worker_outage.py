"""queue_worker with its storage stopped, and throttled SQS messages re-sent unchanged.

Storage stopped = the connection settings point at a loopback port where nothing listens
(Azurite / moto not running). A delivery must then fail quickly with a retryable outcome
(``RetryLater`` on Azure, the item in ``batchItemFailures`` on SQS) and never call the
model, instead of spending a minute and a half inside the SDK's own retries. The bound
asserted (well under the SDK's default retry time, ~85 s on Azure) is the invocation's own
deadline plus a margin, not a performance figure.
"""

from __future__ import annotations

import asyncio
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
from tests.fixtures.azurite import ACCOUNT, ACCOUNT_KEY
from tests.fixtures.core import Handler, chat_answer
from tests.fixtures.events import LambdaContext, load_event
from tests.fixtures.moto import AWS_ENV
from tests.fixtures.procs import free_port
from tests.functions.test_jobs_http import azure_fn
from tests.functions.test_queue_worker import sqs_event

BODY = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}
JOB_TIMEOUT_S = 6.0
#: Far below the SDKs' default retry time (Azure: 15 + 18 + 24 s of pauses).
BOUND_S = JOB_TIMEOUT_S + 15.0


@pytest.fixture(autouse=True)
def usable_event_loop_after() -> Iterator[None]:
    """Powertools' batch processor runs ``asyncio.run``, which leaves the main thread with
    no event loop; Mangum's handlers, called by later tests, need one to exist."""
    yield
    asyncio.set_event_loop_policy(None)


def line(job_id: str | None, **extra: Any) -> str:
    data: dict[str, Any] = {"method": "POST", "url": "/v1/chat/completions", "body": BODY}
    if job_id:
        data["id"] = job_id
    return json.dumps({**data, **extra})  # default separators, as a producer might send


@pytest.fixture
def model_calls(fake_endpoint: Callable[[Handler], None]) -> list[str]:
    calls: list[str] = []

    def answer(req: httpx2.Request) -> httpx2.Response:
        calls.append(req.headers.get("x-request-id", ""))
        return httpx2.Response(200, json=chat_answer("local-model"))

    fake_endpoint(answer)
    return calls


def _reset() -> None:
    from shared.lifecycle import reset_all

    reset_all()


@pytest.fixture
def stopped_azure(clean_env: pytest.MonkeyPatch, model_calls: list[str]) -> list[str]:
    port = free_port()  # nothing listens here
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    clean_env.setenv("AzureWebJobsStorage", conn)
    clean_env.setenv("INFER_JOB_TIMEOUT_S", str(JOB_TIMEOUT_S))
    _reset()
    yield model_calls  # type: ignore[misc]
    _reset()


@pytest.mark.parametrize("job_id", ["job-down-1", None])
async def test_azure_delivery_with_storage_stopped_is_a_quick_retry(
    stopped_azure: list[str], job_id: str | None
) -> None:
    msg = QueueMessage(id="m1", body=line(job_id).encode(), dequeue_count=1)
    t0 = time.monotonic()
    with pytest.raises(RetryLater) as info:
        await azure_fn("queue_worker")(msg)
    elapsed = time.monotonic() - t0
    assert elapsed < BOUND_S, f"storage outage took {elapsed:.1f}s inside the SDK"
    assert info.value.visibility_timeout > 0
    assert stopped_azure == []  # the model is never called without a claim


async def test_azure_last_delivery_with_storage_stopped_still_raises_for_the_poison_queue(
    stopped_azure: list[str],
) -> None:
    msg = QueueMessage(id="m2", body=line("job-down-2").encode(), dequeue_count=5)
    t0 = time.monotonic()
    with pytest.raises(RetryLater):
        await azure_fn("queue_worker")(msg)
    assert time.monotonic() - t0 < BOUND_S


def test_sqs_batch_with_storage_stopped_reports_every_item_failed_quickly(
    clean_env: pytest.MonkeyPatch, model_calls: list[str]
) -> None:
    from functions.queue_worker.aws import handler

    port = free_port()
    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        clean_env.setenv(key, value)
    clean_env.setenv("INFER_BUCKET", "infer-jobs")
    clean_env.setenv("INFER_QUEUE_URL", f"http://127.0.0.1:{port}/123456789012/inference-requests")
    _reset()
    template = load_event("sqs_batch")["Records"][0]
    records = []
    for i in range(3):
        rec = copy.deepcopy(template)
        rec.update(messageId=f"id-{i}", receiptHandle=f"rh-{i}", body=line(f"aws-down-{i}"))
        records.append(rec)
    t0 = time.monotonic()
    try:
        out = handler(
            {"Records": records}, LambdaContext(timeout_s=JOB_TIMEOUT_S, name="queue_worker")
        )
    finally:
        _reset()
    elapsed = time.monotonic() - t0
    assert elapsed < BOUND_S, f"storage outage took {elapsed:.1f}s inside botocore"
    assert sorted(f["itemIdentifier"] for f in out["batchItemFailures"]) == [
        "id-0",
        "id-1",
        "id-2",
    ]
    assert model_calls == []


# -- throttled SQS messages keep their bytes ------------------------------------------------


def test_sqs_throttled_message_without_id_is_re_sent_unchanged(
    sqs: dict[str, Any], fake_endpoint: Callable[[Handler], None]
) -> None:
    from functions.queue_worker.aws import handler
    from shared.jobs.model import derived_id
    from shared.jobs.store import get_job_store

    fake_endpoint(lambda req: httpx2.Response(429, headers={"retry-after": "1"}, json={}))
    body = line(None, custom_id="row-9")
    event, _ = sqs_event(sqs["client"], sqs["url"], [body])
    out = handler(event, LambdaContext(name="queue_worker"))
    assert out["batchItemFailures"] == []  # deferred: acked, sent again with the delay
    again: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not again and time.monotonic() < deadline:
        got = sqs["client"].receive_message(QueueUrl=sqs["url"], WaitTimeSeconds=1)
        again = got.get("Messages", [])
    assert [m["Body"] for m in again] == [body]
    found = get_job_store().get(derived_id(body.encode()))
    assert found is not None and found.record.deferrals == 1


@pytest.fixture
def sqs(job_env: Path, moto_env: Any, clean_env: pytest.MonkeyPatch) -> Any:
    from shared.lifecycle import reset_all
    from shared.storage.s3 import aws_client

    clean_env.delenv("INFER_STORE")
    clean_env.setenv("INFER_BUCKET", "infer-jobs")
    aws_client("s3").create_bucket(Bucket="infer-jobs")
    client = aws_client("sqs")
    url = client.create_queue(QueueName="inference-requests")["QueueUrl"]
    clean_env.setenv("INFER_QUEUE_URL", url)
    reset_all()
    yield {"client": client, "url": url}
    reset_all()


async def test_jobs_api_with_storage_stopped_is_503_with_retry_after(
    stopped_azure: list[str],
) -> None:
    """A storage outage on ``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` is the service being
    unavailable (503 + Retry-After, which the openai SDK retries), not an internal error."""
    from functions.jobs.app import app

    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
        posted = await client.post("/v1/jobs", content=line(None))
        got = await client.get("/v1/jobs/job_0123456789abcdef0123456789abcdef")
    for r in (posted, got):
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "job_store_unavailable"
    assert stopped_azure == []  # the model was never called
