"""Jobs end to end: devhost (the real blueprints) + Azurite queues/blobs + gpusim.

Model calls are counted per job by a loopback proxy in front of gpusim, keyed by the
``x-request-id`` the worker sends (= the job id): no test hook in production code.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from tests.fixtures.devhost import DevhostProcess, wait_for
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.jobs import CountingProxy
from tools.devhost.config import parse_host_json

pytestmark = pytest.mark.e2e

QUEUE = "inference-requests"
HOST_JSON = {
    "version": "2.0",
    "functionTimeout": "00:05:00",
    "extensions": {
        "http": {"routePrefix": "api"},
        "queues": {
            "batchSize": 16,
            "maxDequeueCount": 5,
            "visibilityTimeout": "00:00:01",
            "maxPollingInterval": "00:00:00.200",
            "messageEncoding": "base64",
        },
    },
}


def chat_line(i: int, job_id: str | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": f"row-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "local-model",
            "messages": [{"role": "user", "content": f"question {i}"}],
            "max_tokens": 8,
        },
    }
    if job_id:
        line["id"] = job_id
    return line


@dataclass
class JobsStack:
    host: DevhostProcess
    proxy: CountingProxy
    queue: QueueClient
    poison: QueueClient
    http: httpx2.Client

    def submit(self, line: dict[str, Any]) -> str:
        r = self.http.post("/api/v1/jobs", json=line)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
        return str(r.json()["id"])

    def enqueue_raw(self, text: str) -> None:
        self.queue.send_message(text)

    def get(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait_all(self, ids: list[str], status: str = "succeeded", timeout: float = 60) -> None:
        pending = set(ids)

        def done() -> bool:
            for job_id in list(pending):
                r = self.http.get(f"/api/v1/jobs/{job_id}")  # 404 until a raw message ran
                if r.status_code == 200 and r.json()["status"] == status:
                    pending.discard(job_id)
            return not pending

        try:
            wait_for(done, timeout=timeout, interval=0.3)
        except AssertionError:
            sample = {j: self.http.get(f"/api/v1/jobs/{j}").text for j in list(pending)[:3]}
            raise AssertionError(
                f"{len(pending)} jobs not {status}: {sample}\n{self.host.log_tail()}"
            ) from None

    def poisoned(self) -> list[dict[str, Any]]:
        out = []
        for m in self.poison.receive_messages(max_messages=32, visibility_timeout=30):
            out.append(json.loads(base64.b64decode(m.content)))
        return out


@pytest.fixture
def jobs_stack(
    azurite: Any,
    counting_proxy: Callable[[str], CountingProxy],
    devhost_factory: Callable[..., DevhostProcess],
    tmp_path: Path,
) -> Iterator[Callable[[Gpusim], JobsStack]]:
    clients: list[httpx2.Client] = []

    def make(sim: Gpusim) -> JobsStack:
        proxy = counting_proxy(sim.url)
        app_dir = tmp_path / "app"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "host.json").write_text(json.dumps(HOST_JSON))
        queue = QueueClient.from_connection_string(
            azurite.connection_string, QUEUE, message_encode_policy=TextBase64EncodePolicy()
        )
        poison = QueueClient.from_connection_string(azurite.connection_string, QUEUE + "-poison")
        for q in (queue, poison):
            try:
                q.create_queue()
            except Exception:
                q.clear_messages()
        backends = [{"name": "sim", "kind": "openai", "base_url": proxy.v1, "models": ["*"]}]
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "INFER_BACKENDS": json.dumps(backends),
            "INFER_JOBS_CONTAINER": "jobs-" + uuid.uuid4().hex[:12],
            "INFER_JOB_TIMEOUT_S": "8",
            "INFER_JOB_RETRY_BASE_S": "0.2",
            "INFER_MAX_RETRIES": "0",
            "INFER_MAX_ATTEMPTS": "5",
            "INFER_AUTH_LEVEL": "ANONYMOUS",  # no function key in these tests
        }
        host = devhost_factory(
            app_module="tests.e2e.jobs_app",
            app_dir=app_dir,
            env=env,
            args=["--queue-lease", "3", "--poll-interval", "0.05"],
        )
        http = httpx2.Client(base_url=host.url, timeout=30)
        clients.append(http)
        return JobsStack(host, proxy, queue, poison, http)

    yield make
    for c in clients:
        c.close()


def test_http_and_raw_queue_jobs_all_succeed_once_and_poison_only_the_malformed(
    jobs_stack: Callable[[Gpusim], JobsStack], gpusim: Gpusim
) -> None:
    stack = jobs_stack(gpusim)
    ids = [stack.submit(chat_line(i)) for i in range(100)]
    raw_ids = [f"raw-{i}-{uuid.uuid4().hex[:6]}" for i in range(100)]
    for i, job_id in enumerate(raw_ids):
        stack.enqueue_raw(json.dumps(chat_line(100 + i, job_id)))
    # one message delivered twice: the model must be called once for it
    stack.enqueue_raw(json.dumps(chat_line(0, raw_ids[0])))
    # and one malformed message among them
    stack.enqueue_raw(json.dumps({"id": "broken-1", "url": "/v1/unknown", "body": {}}))
    stack.wait_all(ids + raw_ids)
    calls = stack.proxy.snapshot()
    assert {j: calls.get(j) for j in ids + raw_ids} == {j: 1 for j in ids + raw_ids}
    record = stack.get(raw_ids[1])
    assert record["custom_id"] == "row-101" and record["attempts"] == 1
    assert (
        record["response"]["status_code"] == 200 and record["completed_at"] >= record["created_at"]
    )
    assert record["response"]["body"]["object"] == "chat.completion"
    broken = stack.get("broken-1")
    assert broken["status"] == "failed" and broken["error"]["code"] == "invalid_message"
    poisoned = wait_for(stack.poisoned, timeout=10)
    assert isinstance(poisoned, list) and len(poisoned) == 1
    assert poisoned[0]["job_id"] == "broken-1" and "unknown url" in poisoned[0]["reason"]


def test_rate_limited_endpoint_delays_jobs_but_none_is_poisoned(
    jobs_stack: Callable[[Gpusim], JobsStack], gpusim: Gpusim
) -> None:
    stack = jobs_stack(gpusim)
    gpusim.set_fault("429", count=40, retry_after=0.3)
    ids = [stack.submit(chat_line(i)) for i in range(30)]
    stack.wait_all(ids, timeout=60)
    assert gpusim.stats()["faults"]  # the fault was there to be hit
    calls = stack.proxy.snapshot()
    assert all(calls.get(j) == 1 for j in ids)
    assert any(stack.get(j)["attempts"] > 1 for j in ids)  # some really were retried
    assert stack.poisoned() == []


def test_devhost_killed_mid_run_every_job_still_succeeds(
    jobs_stack: Callable[[Gpusim], JobsStack], gpusim_factory: Callable[..., Gpusim]
) -> None:
    sim = gpusim_factory(max_num_seqs=4, itl_ms=40, min_output_tokens=8, max_output_tokens=8)
    stack = jobs_stack(sim)
    ids = [stack.submit(chat_line(i)) for i in range(40)]
    wait_for(lambda: len(stack.proxy.snapshot()) >= 8, timeout=30)
    stack.host.kill()  # SIGKILL: no cleanup, leases and in-flight messages left behind
    at_kill = stack.proxy.snapshot()
    assert len(at_kill) < len(ids)
    stack.host.start()
    stack.wait_all(ids, timeout=90)
    calls = stack.proxy.snapshot()
    assert all(calls.get(j, 0) >= 1 for j in ids)
    twice = [j for j in ids if calls[j] > 1]
    # A second call is possible only for jobs in flight at the kill (sent to the endpoint,
    # answer not yet written). The host keeps at most batchSize + newBatchThreshold
    # (default batchSize / 2 per processor) messages in flight, so no more jobs than that.
    queues = parse_host_json(HOST_JSON).queues
    assert len(twice) <= queues.batch_size + queues.fetch_threshold
    assert all(calls[j] <= 2 for j in ids)
    assert stack.poisoned() == []
    for j in ids[:5]:
        assert stack.get(j)["response"]["status_code"] == 200


def test_retry_after_defers_for_that_long_without_using_up_deliveries(
    jobs_stack: Callable[[Gpusim], JobsStack], gpusim_factory: Callable[..., Gpusim]
) -> None:
    # host.json's visibilityTimeout is 1 s and devhost, like the host, applies only that on a
    # failure: the Retry-After wait comes from re-enqueueing the job with its own delay.
    sim = gpusim_factory()
    stack = jobs_stack(sim)
    sim.set_fault("429", count=2, retry_after=3)
    t0 = time.monotonic()
    job_id = stack.submit(chat_line(0))
    stack.wait_all([job_id], timeout=60)
    assert time.monotonic() - t0 >= 5.5  # two Retry-After waits of 3 s, not two of 1 s
    assert stack.proxy.snapshot().get(job_id) == 1
    runs = [ln for ln in stack.host.log().splitlines() if "function=queue_worker" in ln]
    assert len(runs) == 3  # two throttled deliveries and the one that succeeded
    assert all("dequeue_count=1 " in ln for ln in runs)  # each a fresh message
    assert stack.poisoned() == []
