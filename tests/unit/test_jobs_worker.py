"""The queue worker's decisions, with the local store and an in-process fake endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from shared.context import Context
from shared.jobs.model import JobLine, JobRecord, Lease, derived_id
from shared.jobs.store import get_job_store
from shared.jobs.worker import Attempt, Outcome, Worker, process_message
from shared.schemas import Operation
from shared.storage.queues import AZURE_LIMIT, claim_check
from tests.fixtures.core import Handler, chat_answer

BODY = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}
FIRST = Attempt(1, 5)


def message(job_id: str | None = "job-1", **extra: Any) -> bytes:
    data: dict[str, Any] = {"method": "POST", "url": "/v1/chat/completions", "body": BODY}
    if job_id is not None:
        data["id"] = job_id
    data.update(extra)
    return json.dumps(data).encode()


class Endpoint:
    """Scripted answers; records the x-request-id of every call."""

    def __init__(self, *answers: httpx2.Response) -> None:
        self.answers = list(answers)
        self.calls: Counter[str] = Counter()

    def __call__(self, req: httpx2.Request) -> httpx2.Response:
        self.calls[req.headers.get("x-request-id", "")] += 1
        if self.answers:
            return self.answers.pop(0)
        return httpx2.Response(200, json=chat_answer("local-model", "done"))


@pytest.fixture
def endpoint(job_env: Path, fake_endpoint: Callable[[Handler], None]) -> Endpoint:
    ep = Endpoint()
    fake_endpoint(ep)
    return ep


def ctx(seconds: float = 10.0) -> Context:
    return Context.with_timeout(seconds)


def record(job_id: str) -> JobRecord:
    found = get_job_store().get(job_id)
    assert found is not None
    return found.record


async def test_success_writes_the_result_and_calls_the_model_with_the_job_id(
    endpoint: Endpoint,
) -> None:
    out = await process_message(message(), FIRST, ctx())
    assert out == Outcome("ack", "job-1", status="succeeded")
    rec = record("job-1")
    assert rec.status == "succeeded" and rec.attempts == 1 and rec.lease is None
    assert rec.response is not None and rec.response["status_code"] == 200
    assert rec.response["body"]["choices"][0]["message"]["content"] == "done"
    assert rec.completed_at is not None and rec.error is None
    assert endpoint.calls == {"job-1": 1}


async def test_redelivered_message_does_not_call_model_twice(endpoint: Endpoint) -> None:
    await process_message(message(), FIRST, ctx())
    again = await process_message(message(), Attempt(2, 5), ctx())
    assert again.action == "ack" and again.reason == "already succeeded"
    assert endpoint.calls == {"job-1": 1}


async def test_concurrent_deliveries_call_the_model_once(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    calls: Counter[str] = Counter()

    async def slow(req: httpx2.Request) -> httpx2.Response:
        calls[req.headers["x-request-id"]] += 1
        await asyncio.sleep(0.3)
        return httpx2.Response(200, json=chat_answer("local-model"))

    fake_endpoint(slow)  # type: ignore[arg-type]
    outs = await asyncio.gather(*(process_message(message(), FIRST, ctx()) for _ in range(4)))
    assert calls == {"job-1": 1}
    assert sorted(o.action for o in outs) == ["ack", "retry", "retry", "retry"]
    assert all(o.reason == "leased by another delivery" for o in outs if o.action == "retry")
    assert record("job-1").status == "succeeded"


async def test_rate_limited_job_is_released_and_deferred_for_retry_after(
    job_env: Path, fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    """A Retry-After longer than the backend's ``retry_after_wait_s`` (0 here) defers."""
    backend = {"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:8081/v1",
               "retry_after_wait_s": 0}  # fmt: skip
    clean_env.setenv("INFER_BACKENDS", json.dumps([backend]))
    fake_endpoint(Endpoint(httpx2.Response(429, headers={"retry-after": "0.3"}, json={})))
    out = await process_message(message(), FIRST, ctx())
    assert out.action == "defer" and out.delay_s == 0.3 and out.status == "queued"
    rec = record("job-1")
    assert rec.status == "queued" and rec.lease is None and rec.attempts == 1
    assert rec.deferrals == 1
    await asyncio.sleep(0.35)  # the platform redelivers after the delay
    out2 = await process_message(message(), Attempt(1, 5), ctx())  # a fresh message
    assert out2.action == "ack" and record("job-1").attempts == 2


async def test_retry_without_retry_after_backs_off_exponentially(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(500, json={}))
    worker = Worker.default()
    worker.rand = lambda: 0.0
    delays = [(await worker.process(message(), Attempt(n, 9), ctx())).delay_s for n in (1, 2, 3)]
    assert delays == [0.5, 1.0, 2.0]


async def test_throttling_beyond_the_defer_budget_counts_as_a_failed_attempt(
    job_env: Path, fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    from shared.lifecycle import reset_all

    clean_env.setenv("INFER_JOB_MAX_DEFERS", "1")
    reset_all()
    fake_endpoint(lambda req: httpx2.Response(429, headers={"retry-after": "0.01"}, json={}))
    first = await process_message(message(), FIRST, ctx())
    await asyncio.sleep(0.05)
    second = await process_message(message(), FIRST, ctx())
    assert (first.action, second.action) == ("defer", "retry")
    assert record("job-1").deferrals == 1


async def test_last_attempt_marks_the_job_failed_then_poisons(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    fake_endpoint(lambda req: httpx2.Response(502, json={"error": {"message": "bad gateway"}}))
    out = await process_message(message(), Attempt(5, 5), ctx())
    assert out.action == "retry" and out.status == "failed"
    assert "after 5 attempts" in out.reason
    rec = record("job-1")
    assert rec.status == "failed" and rec.error is not None
    assert rec.error["code"] == "backend_error" and rec.lease is None


async def test_endpoint_rejection_is_a_completed_failed_job(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    err = {"error": {"message": "prompt blocked", "code": "content_filter"}}
    fake_endpoint(lambda req: httpx2.Response(400, json=err))
    out = await process_message(message(), FIRST, ctx())
    assert out.action == "ack" and out.status == "failed"
    rec = record("job-1")
    assert rec.response is not None and rec.response["status_code"] == 400
    assert rec.error is not None and rec.error["message"]


async def test_invalid_body_fails_without_calling_the_model(endpoint: Endpoint) -> None:
    bad = json.dumps({"id": "job-2", "url": "/v1/chat/completions", "body": {"model": "m"}})
    out = await process_message(bad, FIRST, ctx())
    assert out.action == "ack" and out.status == "failed"
    rec = record("job-2")
    assert rec.error is not None and "messages" in rec.error["message"]
    assert rec.response is not None and rec.response["status_code"] == 400
    assert endpoint.calls == {}


@pytest.mark.parametrize(
    ("raw", "job_id", "reason"),
    [
        (b"{not json", None, "not valid JSON"),
        (b'["a list"]', None, "JSON object"),
        (json.dumps({"id": "job-3", "body": BODY}).encode(), "job-3", "missing 'url'"),
        (
            json.dumps({"id": "job-4", "url": "/v1/images", "body": BODY}).encode(),
            "job-4",
            "unknown url",
        ),
        (json.dumps({"id": "../x", "url": "/v1/embeddings", "body": {}}).encode(), None, "'id'"),
    ],
)
async def test_malformed_messages_are_poisoned_with_a_reason(
    endpoint: Endpoint, raw: bytes, job_id: str | None, reason: str
) -> None:
    out = await process_message(raw, FIRST, ctx())
    assert out.action == "poison" and out.job_id == job_id and reason in out.reason
    if job_id:
        rec = record(job_id)
        assert rec.status == "failed" and rec.error == {
            "code": "invalid_message",
            "message": out.reason,
        }
    assert endpoint.calls == {}


async def test_claim_checked_body_is_loaded_from_the_store(endpoint: Endpoint) -> None:
    big = {**BODY, "messages": [{"role": "user", "content": "y" * (AZURE_LIMIT + 1)}]}
    text = claim_check({"id": "job-5", "url": "/v1/chat/completions", "body": big}, AZURE_LIMIT)
    assert "body_ref" in text
    out = await process_message(text, FIRST, ctx())
    assert out.status == "succeeded" and endpoint.calls == {"job-5": 1}


async def test_missing_body_ref_is_poison(endpoint: Endpoint) -> None:
    raw = json.dumps({"id": "job-6", "url": "/v1/completions", "body_ref": "job-bodies/gone.json"})
    out = await process_message(raw, FIRST, ctx())
    assert out.action == "poison" and "does not exist" in out.reason
    assert record("job-6").status == "failed"


async def test_live_lease_of_another_delivery_defers_and_expired_one_is_taken_over(
    endpoint: Endpoint,
) -> None:
    line = JobLine(op=Operation.CHAT, url="/v1/chat/completions", body=BODY)
    store = get_job_store()
    held = JobRecord.new(line, "job-7").model_copy(
        update={
            "status": "running",
            "attempts": 1,
            "lease": Lease(token="x", until=time.time() + 30),
        }
    )
    created = store.create(held)
    out = await process_message(message("job-7"), Attempt(2, 5), ctx())
    assert out.action == "retry" and 29 < out.delay_s <= 31 and endpoint.calls == {}
    # the holder crashed: once its lease has expired, a redelivery takes the job over
    expired = held.model_copy(update={"lease": Lease(token="x", until=time.time() - 1)})
    store.replace(expired, created.etag)
    out = await process_message(message("job-7"), Attempt(3, 5), ctx())
    assert out.status == "succeeded" and record("job-7").attempts == 2
    assert endpoint.calls == {"job-7": 1}


async def test_too_little_time_left_releases_without_claiming(endpoint: Endpoint) -> None:
    out = await process_message(message("job-8"), FIRST, ctx(0.2))
    assert out.action == "retry" and out.delay_s > 0
    rec = record("job-8")
    assert rec.status == "queued" and rec.attempts == 0 and endpoint.calls == {}


async def test_deadline_during_the_call_releases_the_lease(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    async def hang(req: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(5)
        return httpx2.Response(200, json=chat_answer("local-model"))

    fake_endpoint(hang)  # type: ignore[arg-type]
    out = await process_message(message("job-9"), FIRST, ctx(1.0))
    assert out.action == "retry" and out.status == "queued"
    rec = record("job-9")
    assert rec.status == "queued" and rec.lease is None and rec.response is None


async def test_message_without_id_gets_a_stable_derived_id(endpoint: Endpoint) -> None:
    raw = message(None, custom_id="row-1")
    out = await process_message(raw, FIRST, ctx())
    assert out.job_id == derived_id(raw) and record(out.job_id).custom_id == "row-1"
    again = await process_message(raw, Attempt(2, 5), ctx())
    assert again.action == "ack" and endpoint.calls == {out.job_id: 1}


async def test_a_job_whose_retry_budget_is_spent_fails_and_is_poisoned_without_a_call(
    endpoint: Endpoint,
) -> None:
    # a budget of 1 + 0 + 4 + 20 = 25 tries (job_env: INFER_MAX_RETRIES=0), all reserved by
    # earlier deliveries (one died holding its share)
    line = JobLine(op=Operation.CHAT, url="/v1/chat/completions", body=BODY)
    get_job_store().create(JobRecord.new(line, "job-b").model_copy(update={"tries": 25}))
    out = await process_message(message("job-b"), Attempt(2, 5), ctx())
    assert (out.action, out.status) == ("poison", "failed")
    rec = record("job-b")
    assert rec.status == "failed" and rec.error is not None
    assert rec.error["code"] == "retry_budget_spent"
    assert endpoint.calls == {}


async def test_the_try_that_spends_the_budget_fails_the_job_before_its_last_delivery(
    job_env: Path, fake_endpoint: Callable[[Handler], None]
) -> None:
    calls: list[int] = []

    def down(req: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        return httpx2.Response(500, json={"error": {"message": "gpu on fire"}})

    fake_endpoint(down)
    line = JobLine(op=Operation.CHAT, url="/v1/chat/completions", body=BODY)
    get_job_store().create(JobRecord.new(line, "job-c").model_copy(update={"tries": 24}))
    out = await process_message(message("job-c"), Attempt(1, 5), ctx())
    assert (out.action, out.status) == ("poison", "failed")
    assert "after 25 tries" in out.reason
    rec = record("job-c")
    assert rec.status == "failed" and rec.tries == 25 and rec.lease is None
    assert rec.error is not None and rec.error["code"] == "backend_error"
    assert len(calls) == 1


async def test_a_priced_backend_writes_the_jobs_cost(
    job_env: Path, fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    from shared.lifecycle import reset_all

    backend = {"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:8081/v1",
               "price": {"input_per_1m": 1_000_000, "output_per_1m": 2_000_000}}  # fmt: skip
    clean_env.setenv("INFER_BACKENDS", json.dumps([backend]))
    reset_all()
    fake_endpoint(Endpoint())
    out = await process_message(message(), FIRST, ctx())
    assert out.status == "succeeded"
    # usage 3 prompt + 1 completion tokens at 1 and 2 a token
    assert record("job-1").cost == 5.0
    assert record("job-1").public()["cost"] == 5.0
