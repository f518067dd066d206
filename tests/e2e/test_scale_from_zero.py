"""An endpoint scaled to zero wakes up, and nothing sent meanwhile is lost or failed.

gpusim speaks SageMaker's protocol with no replica ready: every call gets SageMaker's real
answer (HTTP 400 ``ValidationError``, "Inference Component has no capacity ...") until the
scale-out that the first such call starts (as a step policy on
``NoCapacityInvocationFailures`` would) has warmed a replica. Meanwhile 100 queued jobs and a
batch of 200 lines are sent through devhost: every job and line succeeds once the endpoint
wakes, none is failed or poisoned, and a synchronous chat in the window gets 503 with
``Retry-After``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from tests.e2e.test_batch_e2e import done, outputs, upload, wait_status
from tests.e2e.test_jobs_devhost import HOST_JSON, QUEUE, chat_line
from tests.fixtures.azurite import Azurite
from tests.fixtures.batch import make_input
from tests.fixtures.devhost import DevhostFactory, wait_for
from tests.fixtures.gpusim import Gpusim

pytestmark = pytest.mark.e2e

WARMUP_S = 8.0
JOBS = 100
LINES = 200


def test_jobs_and_a_batch_sent_while_scaled_to_zero_all_succeed_once_it_wakes(
    devhost_factory: DevhostFactory,
    azurite: Azurite,
    gpusim_factory: Callable[..., Gpusim],
    tmp_path: Path,
) -> None:
    from azure.storage.queue import QueueClient

    sim = gpusim_factory(replicas=0, warmup_s=WARMUP_S, wake_on_request=True)
    for name in (QUEUE, QUEUE + "-poison"):
        q = QueueClient.from_connection_string(azurite.connection_string, name)
        try:
            q.create_queue()
        except Exception:
            q.clear_messages()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "host.json").write_text(json.dumps(HOST_JSON))
    backends = [{"name": "sm", "kind": "sagemaker", "endpoint_name": "llm",
                 "inference_component": "llm-ic", "region": "us-east-1",
                 "endpoint_url": sim.url, "models": ["*"], "max_concurrency": 32}]  # fmt: skip
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "INFER_BACKENDS": json.dumps(backends),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "INFER_JOBS_CONTAINER": "jobs-" + uuid.uuid4().hex[:12],
        "INFER_JOB_TIMEOUT_S": "8",
        "INFER_MAX_ATTEMPTS": "3",  # few deliveries: a wait that used them up would show
        "INFER_JOB_MAX_DEFERS": "1",  # and so would one that counted as a deferral
        "INFER_MAX_RETRIES": "0",
        "INFER_BATCH_CHECKPOINT_S": "0.3",
        "INFER_BATCH_STATUS_S": "0.3",
        "INFER_BATCH_LINE_RETRIES": "1",
        "INFER_AUTH_LEVEL": "ANONYMOUS",
    }
    host = devhost_factory(
        app_module="tests.e2e.capacity_app",
        app_dir=app_dir,
        env=env,
        args=["--queue-lease", "3", "--poll-interval", "0.05", "--blob-poll-interval", "0.2",
              "--no-timers"],
    )  # fmt: skip
    http = httpx2.Client(base_url=host.url, timeout=30)
    started = time.monotonic()
    chat = http.post("/api/v1/chat/completions", json=chat_line(0)["body"])
    assert chat.status_code == 503, chat.text
    assert chat.json()["error"]["code"] == "backend_warming"
    assert int(chat.headers["retry-after"]) >= 1

    ids = []
    for i in range(JOBS):
        r = http.post("/api/v1/jobs", json=chat_line(i))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    data, good, _ = make_input(LINES, prefix="wake")
    upload(azurite, "wake", data)
    assert sim.stats()["scale"]["replicas"] == 0  # all of it sent before the endpoint woke

    def all_succeeded() -> bool:
        states = [http.get(f"/api/v1/jobs/{j}").json()["status"] for j in ids]
        assert "failed" not in states, states
        return all(s == "succeeded" for s in states)

    wait_for(all_succeeded, timeout=120, interval=1.0)
    st = wait_status(azurite, "wake", done, timeout=120)
    out, err = outputs(azurite, "wake")
    assert err == [] and len(out) == LINES == len(good)
    assert st["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
    assert time.monotonic() - started >= WARMUP_S  # they did wait for the replica
    poison = QueueClient.from_connection_string(azurite.connection_string, QUEUE + "-poison")
    assert list(poison.peek_messages(max_messages=32)) == []
    assert http.post("/api/v1/chat/completions", json=chat_line(1)["body"]).status_code == 200


def test_prefer_respond_async_at_capacity_gets_202_and_a_job_that_succeeds(
    devhost_factory: DevhostFactory,
    azurite: Azurite,
    gpusim_factory: Callable[..., Gpusim],
    tmp_path: Path,
) -> None:
    sim = gpusim_factory()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "host.json").write_text(json.dumps(HOST_JSON))
    backends = [{"name": "gpu", "kind": "openai", "base_url": sim.v1, "models": ["*"],
                 "max_concurrency": 1}]  # fmt: skip
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "INFER_BACKENDS": json.dumps(backends),
        "INFER_JOBS_CONTAINER": "jobs-" + uuid.uuid4().hex[:12],
        "INFER_AUTH_LEVEL": "ANONYMOUS",
    }
    host = devhost_factory(
        app_module="tests.e2e.capacity_app", app_dir=app_dir, env=env,
        args=["--poll-interval", "0.05", "--no-blobs", "--no-timers"],
    )  # fmt: skip
    http = httpx2.Client(base_url=host.url, timeout=30)
    sim.set_fault("slow_first_token", 1, delay_s=3)  # holds the only slot for 3 s
    body = chat_line(0)["body"]
    with http.stream("POST", "/api/v1/chat/completions", json={**body, "stream": True}) as held:
        assert held.status_code == 200
        r = http.post("/api/v1/chat/completions", json=body, headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        assert r.headers["preference-applied"] == "respond-async"
        location = r.headers["location"]
        assert location == f"/api/v1/jobs/{r.json()['id']}"
        assert r.json()["status"] == "queued"
        held.read()
    record = wait_for(
        lambda: (j := http.get(location).json())["status"] == "succeeded" and j, timeout=30
    )
    assert record["response"]["body"]["object"] == "chat.completion"  # type: ignore[index]
