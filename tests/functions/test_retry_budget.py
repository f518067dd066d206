"""One retry budget across layers, counted at the model endpoint (gpusim, fault injection).

A batch line and a job both retry the service call themselves; the service retries too.
The budget (docs/architecture.md, "One retry budget") adds the layers' retries instead of
multiplying them: a line has 1 + INFER_MAX_RETRIES + INFER_BATCH_LINE_RETRIES service tries,
a job 1 + INFER_MAX_RETRIES + (INFER_MAX_ATTEMPTS - 1) + INFER_JOB_MAX_DEFERS over all its
deliveries. With one backend, each try is one model call, which gpusim counts.

Two knobs keep the exact counts fast and deterministic, neither a retry rule: backoff starts
at 10 ms instead of 0.5 s, and the circuit does not open after three 500s (it would make
tries without a model call: fewer calls, never more).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.batch.config import BatchSettings
from shared.batch.runner import Batch
from shared.batch.state import Stores, status_key
from shared.context import Context
from shared.jobs.store import get_job_store
from shared.jobs.worker import Attempt, Worker
from shared.service import get_service
from tests.fixtures.batch import chat_line, gpusim_backend, read_jsonl
from tests.fixtures.gpusim import Gpusim

CHAT = "/v1/chat/completions"


def model_calls(sim: Gpusim) -> int:
    return sum(sim.stats()["requests"].get(CHAT, {}).values())


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.retry.INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr("shared.router.FAILURE_THRESHOLD", 1000)


async def test_a_failing_batch_line_makes_its_budget_of_calls_not_the_product(
    batch_env: pytest.MonkeyPatch, memory_stores: Stores, gpusim: Gpusim, fast_retries: None
) -> None:
    batch_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    batch_env.setenv("INFER_MAX_RETRIES", "2")
    gpusim.set_fault("500", -1)
    data = json.dumps(chat_line("down-1", "always fails")).encode() + b"\n"
    memory_stores.inp.put("down.jsonl", data, content_type="application/jsonl")
    settings = BatchSettings(checkpoint_s=0.02, status_s=0.02, handoff_margin_s=0.2, line_retries=3)
    sent: list[dict[str, Any]] = []
    b = Batch(stores=memory_stores, service=get_service(), send=sent.append, settings=settings)

    outcome = await b.start("batch-in/down.jsonl", Context.with_timeout(30))

    assert "completed" in outcome and not sent
    assert model_calls(gpusim) == 1 + 2 + 3  # the budget; (1 + 2) * (1 + 3) = 12 before
    obj = memory_stores.out.get("down.errors.jsonl")
    assert obj is not None
    [failed] = read_jsonl(obj.data)
    assert failed["custom_id"] == "down-1"
    assert failed["response"]["status_code"] == 502  # the endpoint's 500, as a backend error
    status = memory_stores.out.get(status_key("down"))
    assert status is not None
    assert json.loads(status.data)["request_counts"]["failed"] == 1


def job_message(job_id: str) -> bytes:
    body = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"id": job_id, "url": "/v1/chat/completions", "body": body}).encode()


@pytest.fixture
def job_sim(job_env: Path, gpusim: Gpusim, fast_retries: None, monkeypatch: Any) -> Gpusim:
    monkeypatch.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    monkeypatch.setenv("INFER_MAX_RETRIES", "2")
    return gpusim


async def test_a_failing_job_shares_one_budget_across_its_deliveries(job_sim: Gpusim) -> None:
    job_sim.set_fault("500", -1)
    worker = Worker.default()
    outcomes = []
    for n in range(1, 6):  # the platform redelivers until maxDequeueCount (5)
        outcome = await worker.process(
            job_message("j-down"), Attempt(n, 5), Context.with_timeout(30)
        )
        outcomes.append((outcome.action, outcome.status))
    assert outcomes == [("retry", "queued")] * 4 + [("retry", "failed")]
    # the first delivery has the service's 1 + 2 tries, each redelivery one: 1 + 2 + (5 - 1)
    assert model_calls(job_sim) == 7  # (1 + 2) * 5 = 15 before
    found = get_job_store().get("j-down")
    assert found is not None
    assert (found.record.status, found.record.attempts, found.record.tries) == ("failed", 5, 7)
    # a redelivery of the failed job acks without calling the model
    again = await worker.process(job_message("j-down"), Attempt(5, 5), Context.with_timeout(30))
    assert again.action == "ack"
    assert model_calls(job_sim) == 7


async def test_a_throttled_job_defers_within_the_same_budget(job_sim: Gpusim) -> None:
    job_sim.set_fault("429", -1, retry_after=0.01)
    worker = Worker.default()
    actions: list[str] = []
    number = 1
    while len(actions) < 100:
        outcome = await worker.process(
            job_message("j-busy"), Attempt(number, 5), Context.with_timeout(30)
        )
        actions.append(outcome.action)
        if outcome.status == "failed":
            break
        # a deferral is a new message (delivery count 1), a retry the same one again
        number = 1 if outcome.action == "defer" else number + 1
    # throttling still does not use up deliveries: 20 deferrals, then 5 deliveries
    assert actions == ["defer"] * 20 + ["retry"] * 5
    found = get_job_store().get("j-busy")
    assert found is not None
    assert (found.record.status, found.record.deferrals) == ("failed", 20)
    budget = 1 + 2 + (5 - 1) + 20
    assert found.record.tries == budget  # 25 deliveries * 3 tries = 75 before
    assert model_calls(job_sim) <= budget  # a try that finds the circuit open calls nothing


async def test_a_job_that_succeeds_after_failures_gives_back_its_unused_tries(
    job_sim: Gpusim,
) -> None:
    job_sim.set_fault("500", 1)
    worker = Worker.default()
    outcome = await worker.process(job_message("j-ok"), Attempt(1, 5), Context.with_timeout(30))
    assert (outcome.action, outcome.status) == ("ack", "succeeded")
    assert model_calls(job_sim) == 2
    found = get_job_store().get("j-ok")
    assert found is not None
    assert found.record.tries == 2  # reserved 3 at the claim, one given back
    again = await worker.process(job_message("j-ok"), Attempt(2, 5), Context.with_timeout(30))
    assert again.action == "ack"
    assert model_calls(job_sim) == 2, "a redelivery after success never calls the model"
