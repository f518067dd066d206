"""The worker under answers that lie and storage that fails, and the calls one job costs.

- A 3xx, or a 2xx whose body is not JSON, is a backend error: never ``succeeded``, and the
  lease is released (never left ``running`` while the message retries or is poisoned).
- Whatever fails inside a delivery, the answer is an ``Outcome``; on the last attempt the
  job is written ``failed`` first.
- A throttled message is re-sent byte for byte, so a derived job id and its defer count
  carry on.
- A job claims with one conditional write and reads nothing first.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from shared.context import Context
from shared.jobs.model import JobLine, JobRecord, derived_id, parse_line
from shared.jobs.store import JobStore, get_job_store
from shared.jobs.worker import Attempt, Worker
from shared.storage import StoredObject, get_store
from tests.fixtures.core import Handler, chat_answer
from tests.functions.test_jobs_http import azure_fn

BODY = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}


def message(job_id: str | None = "job-1", **extra: Any) -> bytes:
    data: dict[str, Any] = {"method": "POST", "url": "/v1/chat/completions", "body": BODY}
    if job_id is not None:
        data["id"] = job_id
    data.update(extra)
    return json.dumps(data).encode()  # default separators: ", " and ": "


def ctx() -> Context:
    return Context.with_timeout(10.0)


def record(job_id: str) -> JobRecord:
    found = get_job_store().get(job_id)
    assert found is not None
    return found.record


class CountingStore:
    """The real local store, counting calls by kind; ``fail_when`` makes a put raise."""

    def __init__(self, inner: Any, fail_when: Callable[[bytes], bool] | None = None) -> None:
        self.inner = inner
        self.namespace = inner.namespace
        self.calls: Counter[str] = Counter()
        self.fail_when = fail_when

    def get(self, key: str) -> StoredObject | None:
        self.calls["get"] += 1
        return self.inner.get(key)  # type: ignore[no-any-return]

    def put(self, key: str, data: bytes, **kw: Any) -> str:
        kind = (
            "put_if_match"
            if kw.get("if_match")
            else "put_create"
            if kw.get("if_none_match")
            else "put"
        )
        self.calls[kind] += 1
        if self.fail_when is not None and self.fail_when(data):
            raise ConnectionError("storage went away")
        return self.inner.put(key, data, **kw)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def worker_with(store: CountingStore) -> Worker:
    worker = Worker.default()
    worker.jobs = JobStore(store)  # type: ignore[arg-type]
    worker.rand = lambda: 0.0
    return worker


@pytest.fixture
def counted(job_env: Path) -> CountingStore:
    return CountingStore(get_store("jobs"))


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_redirect_is_a_backend_error_not_a_success(
    job_env: Path, fake_endpoint: Callable[[Handler], None], status: int
) -> None:
    fake_endpoint(lambda req: httpx2.Response(status, headers={"location": "http://elsewhere/"}))
    out = await Worker.default().process(message(), Attempt(1, 5), ctx())
    assert out.action == "ack" and out.status == "failed"
    rec = record("job-1")
    assert rec.status == "failed" and rec.lease is None
    assert rec.error is not None and rec.error["code"] == "backend_error"
    assert str(status) in rec.error["message"]


@pytest.mark.parametrize(
    "answer",
    [
        httpx2.Response(200, text="<html>gateway login</html>"),
        httpx2.Response(200, content=b""),
        httpx2.Response(200, content=b'{"id": "cut off'),
        httpx2.Response(200, content=b"{not json}"),
    ],
)
async def test_a_2xx_that_is_not_json_releases_the_lease_and_fails_on_the_last_attempt(
    job_env: Path, fake_endpoint: Callable[[Handler], None], answer: httpx2.Response
) -> None:
    fake_endpoint(lambda req: answer)
    worker = Worker.default()
    out = await worker.process(message(), Attempt(1, 3), ctx())
    assert out.action == "retry" and out.status == "queued" and out.delay_s > 0
    rec = record("job-1")
    assert rec.status == "queued" and rec.lease is None and rec.attempts == 1
    last = await worker.process(message(), Attempt(3, 3), ctx())
    assert last.action == "retry" and last.status == "failed"  # the platform poisons it next
    rec = record("job-1")
    assert rec.status == "failed" and rec.lease is None
    assert rec.error is not None and rec.error["code"] == "backend_error"


async def test_storage_failing_after_the_model_answered_releases_the_claim(
    counted: CountingStore, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    counted.fail_when = lambda data: b'"succeeded"' in data
    out = await worker_with(counted).process(message(), Attempt(1, 5), ctx())
    assert out.action == "retry" and out.delay_s > 0 and "storage went away" in out.reason
    rec = record("job-1")
    assert rec.status == "queued" and rec.lease is None  # not left running


async def test_any_failure_on_the_last_attempt_leaves_the_job_failed(
    counted: CountingStore, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    counted.fail_when = lambda data: b'"succeeded"' in data
    out = await worker_with(counted).process(message(), Attempt(5, 5), ctx())
    assert out.action == "retry" and out.status == "failed"
    rec = record("job-1")
    assert rec.status == "failed" and rec.lease is None
    assert rec.error is not None and rec.error["code"] == "worker_error"


async def test_a_job_whose_store_is_unreachable_is_a_retry_not_an_exception(
    counted: CountingStore, fake_endpoint: Callable[[Handler], None]
) -> None:
    calls: list[str] = []
    fake_endpoint(lambda req: calls.append("model") or httpx2.Response(200, json={}))  # type: ignore[func-returns-value]
    counted.fail_when = lambda data: True
    out = await worker_with(counted).process(message(), Attempt(2, 5), ctx())
    assert out.action == "retry" and out.delay_s > 0 and calls == []


async def test_a_throttled_message_without_id_is_re_sent_byte_for_byte(
    job_env: Path, fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    from azure.functions.queue import QueueMessage

    from shared.lifecycle import reset_all
    from shared.storage.queues import get_queue

    clean_env.setenv("INFER_JOB_MAX_DEFERS", "2")
    reset_all()
    fake_endpoint(lambda req: httpx2.Response(429, headers={"retry-after": "0"}, json={}))

    raw = message(None, custom_id="row-1")
    job_id = derived_id(raw)
    text = raw
    outcomes = []
    for n in range(3):  # throttled three times: two defers, then an ordinary retry
        try:
            await azure_fn("queue_worker")(QueueMessage(id=f"m{n}", body=text, dequeue_count=1))
            outcomes.append("acked")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            break
        spool = get_queue("inference-requests").path  # type: ignore[attr-defined]
        (sent,) = sorted(spool.glob("[0-9]*.json"))  # sent with a delay: not visible yet
        again = sent.read_bytes()
        sent.unlink()
        assert again == raw  # the same bytes, so the same derived id
        text = again
    assert outcomes == ["acked", "acked", "RetryLater"]
    rec = record(job_id)
    assert rec.deferrals == 2 and rec.custom_id == "row-1" and rec.status == "queued"


async def test_a_submitted_job_is_claimed_and_finished_with_two_writes_and_no_read(
    counted: CountingStore, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    line = parse_line(json.loads(message("job-s")))
    stored = get_job_store().create(JobRecord.new(line, "job-s", caller="key-a"))
    text = json.dumps(line.message("job-s", stored.record.seed(stored.etag))).encode()
    out = await worker_with(counted).process(text, Attempt(1, 5), ctx())
    assert out.status == "succeeded"
    assert counted.calls == {"put_if_match": 2}
    rec = record("job-s")
    assert rec.caller == "key-a" and rec.created_at == stored.record.created_at
    assert rec.request_hash == stored.record.request_hash and rec.attempts == 1
    # a redelivery of the same message reads once and acks: the model is not called again
    counted.calls.clear()
    again = await worker_with(counted).process(text, Attempt(2, 5), ctx())
    assert again.action == "ack" and again.reason == "already succeeded"
    assert counted.calls == {"put_if_match": 1, "get": 1}


async def test_a_raw_message_is_claimed_with_one_create(
    counted: CountingStore, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    out = await worker_with(counted).process(message("job-r"), Attempt(1, 5), ctx())
    assert out.status == "succeeded"
    assert counted.calls == {"put_create": 1, "put_if_match": 1}


async def test_a_stale_or_forged_seed_falls_back_to_reading_the_record(
    counted: CountingStore, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    line = JobLine(op=parse_line(json.loads(message())).op, url="/v1/chat/completions", body=BODY)
    stored = get_job_store().create(JobRecord.new(line, "job-f", caller="key-a"))
    forged = {"etag": '"not-it"', "created_at": 1, "caller": "someone-else"}
    text = message("job-f", job=forged)
    out = await worker_with(counted).process(text, Attempt(1, 5), ctx())
    assert out.status == "succeeded"
    rec = record("job-f")
    assert rec.caller == "key-a" and rec.created_at == stored.record.created_at
