"""Queue triggers through devhost against Azurite: delete, retry, poison, crash-resume."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from tests.fixtures.azurite import Azurite
from tests.fixtures.devhost import DEVHOST_APP, DevhostFactory, DevhostProcess, wait_for

pytestmark = pytest.mark.e2e


class Env:
    def __init__(self, azurite: Azurite, out: Path) -> None:
        self.azurite = azurite
        self.out = out
        self.queue_name = f"q{uuid.uuid4().hex[:12]}"
        self.vars = {
            "AzureWebJobsStorage": azurite.connection_string,
            "DEVHOST_TEST_QUEUE": self.queue_name,
            "DEVHOST_TEST_CONTAINER": f"c{uuid.uuid4().hex[:12]}",
            "DEVHOST_TEST_OUT": str(out),
        }

    def client(self, name: str | None = None, *, base64_policy: bool = True) -> QueueClient:
        policy = TextBase64EncodePolicy() if base64_policy else None
        return QueueClient.from_connection_string(
            self.azurite.connection_string, name or self.queue_name, message_encode_policy=policy
        )

    def send(self, job: dict[str, Any]) -> None:
        self.client().send_message(json.dumps(job))

    def records(self, key: str, kind: str) -> list[dict[str, Any]]:
        path = self.out / f"{key}.{kind}"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def raw_messages(self, name: str) -> list[str]:
        client = self.client(name, base64_policy=False)
        try:
            return [m.content for m in client.peek_messages(max_messages=32)]
        except ResourceNotFoundError:  # output queues exist once something is written
            return []

    def approximate_count(self, name: str | None = None) -> int:
        props = self.client(name, base64_policy=False).get_queue_properties()
        return int(props.approximate_message_count)


@pytest.fixture
def env(azurite: Azurite, tmp_path: Path) -> Env:
    return Env(azurite, tmp_path)


@pytest.fixture
def host(env: Env, devhost_factory: DevhostFactory) -> DevhostProcess:
    return devhost_factory(env=env.vars, args=["--no-blobs", "--queue-lease", "3"])


def test_success_deletes_the_message_and_decodes_base64(env: Env, host: DevhostProcess) -> None:
    env.send({"key": "ok", "note": "héllo"})
    done = wait_for(lambda: env.records("ok", "done"))
    assert isinstance(done, list)
    assert json.loads(done[0]["body"]) == {"key": "ok", "note": "héllo"}
    assert done[0]["dequeue_count"] == 1
    wait_for(lambda: env.approximate_count() == 0)
    assert env.raw_messages(f"{env.queue_name}-poison") == []
    assert "trigger=queue" in host.log() and "outcome=success" in host.log()
    assert "héllo" not in host.log()  # bodies are never logged


def test_failures_retry_with_growing_dequeue_count(env: Env, host: DevhostProcess) -> None:
    env.send({"key": "flaky", "fail": 2})
    wait_for(lambda: env.records("flaky", "done"))
    attempts = [r["dequeue_count"] for r in env.records("flaky", "attempts")]
    assert attempts == [1, 2, 3]
    assert env.records("flaky", "done")[0]["dequeue_count"] == 3
    assert env.raw_messages(f"{env.queue_name}-poison") == []


def test_exception_visibility_timeout_is_ignored_as_by_the_host(
    env: Env, host: DevhostProcess
) -> None:
    # The deployed host applies host.json's visibilityTimeout (0 s here) whatever the function
    # raises; a 60 s delay on the exception would keep the retry out of this test's wait.
    env.send({"key": "later", "fail": 1, "delay": 60})
    wait_for(lambda: env.records("later", "done"))
    assert [r["dequeue_count"] for r in env.records("later", "attempts")] == [1, 2]


def test_failed_message_waits_host_json_visibility_timeout(
    env: Env, devhost_factory: DevhostFactory, tmp_path: Path
) -> None:
    config = json.loads((DEVHOST_APP / "host.json").read_text())
    config["extensions"]["queues"]["visibilityTimeout"] = "00:00:02"
    host_json = tmp_path / "host.slow.json"
    host_json.write_text(json.dumps(config))
    devhost_factory(env=env.vars, args=["--no-blobs", "--host-json", str(host_json)])
    env.send({"key": "fixed", "fail": 1, "delay": 0})  # the exception's 0 s is ignored too
    wait_for(lambda: env.records("fixed", "done"))
    first, second = env.records("fixed", "attempts")
    assert second["t"] - first["t"] >= 1.8


def test_trigger_argument_is_what_the_library_converter_builds(
    env: Env, host: DevhostProcess
) -> None:
    env.send({"key": "meta"})
    (done,) = wait_for(lambda: env.records("meta", "done"))  # type: ignore[misc]
    # QueueMessageInConverter.decode's class and fields, from the host's trigger metadata
    assert done["type"] == "azure.functions.queue.QueueMessage"
    assert done["pop_receipt"] and done["id"]
    inserted = datetime.fromisoformat(done["insertion_time"])
    expires = datetime.fromisoformat(done["expiration_time"])
    assert inserted.tzinfo is not None and expires > inserted
    assert done["time_next_visible"] is not None


def test_poison_after_max_dequeue_count_keeps_the_message_intact(
    env: Env, host: DevhostProcess
) -> None:
    job = {"key": "bad", "fail": 99}
    env.send(job)
    poison = f"{env.queue_name}-poison"
    wait_for(lambda: env.raw_messages(poison))
    assert [r["dequeue_count"] for r in env.records("bad", "attempts")] == [
        1,
        2,
        3,
    ]  # maxDequeueCount 3
    (raw,) = env.raw_messages(poison)
    assert json.loads(base64.b64decode(raw)) == job  # same text, same (base64) encoding
    assert env.approximate_count() == 0
    assert env.records("bad", "done") == []


def test_invalid_base64_goes_straight_to_poison(env: Env, host: DevhostProcess) -> None:
    env.client(base64_policy=False).send_message("this is {not} base64!")
    poison = f"{env.queue_name}-poison"
    wait_for(lambda: env.raw_messages(poison))
    assert env.raw_messages(poison) == ["this is {not} base64!"]
    assert not list(env.out.glob("*.attempts"))  # the function never ran
    assert "invalid base64" in host.log()


def test_output_binding_writes_to_the_output_queue(env: Env, host: DevhostProcess) -> None:
    env.send({"key": "fwd", "forward": True})
    out = f"{env.queue_name}-out"
    raw = wait_for(lambda: env.raw_messages(out))
    assert isinstance(raw, list)
    assert json.loads(base64.b64decode(raw[0])) == {"forwarded": "fwd"}


def test_batch_runs_concurrently(env: Env, host: DevhostProcess) -> None:
    t0 = time.monotonic()
    for i in range(6):
        env.send({"key": f"par{i}", "sleep": 1.0})
    wait_for(lambda: all(env.records(f"par{i}", "done") for i in range(6)), timeout=20)
    assert time.monotonic() - t0 < 4.0  # six 1 s functions, run side by side


def test_sigkill_mid_processing_loses_nothing(env: Env, host: DevhostProcess) -> None:
    env.send({"key": "crash", "sleep": 2.5})
    wait_for(lambda: env.records("crash", "attempts"))
    host.kill()  # SIGKILL: no chance to settle the message
    assert env.records("crash", "done") == []
    host.restart()
    done = wait_for(lambda: env.records("crash", "done"), timeout=20)
    assert isinstance(done, list)
    # the lease (3 s here) ran out, so the message came back with its dequeue count raised
    assert done[0]["dequeue_count"] == 2
    wait_for(lambda: env.approximate_count() == 0)


def test_sigterm_lets_running_functions_finish(env: Env, host: DevhostProcess) -> None:
    env.send({"key": "graceful", "sleep": 1.0})
    wait_for(lambda: env.records("graceful", "attempts"))
    host.stop()  # SIGTERM
    assert host.proc is not None and host.proc.returncode == 0
    assert env.records("graceful", "done")
    assert env.approximate_count() == 0


def test_lease_is_renewed_while_the_function_runs(env: Env, host: DevhostProcess) -> None:
    env.send({"key": "long", "sleep": 5.0})  # longer than the 3 s lease devhost was given
    wait_for(lambda: env.records("long", "done"), timeout=20)
    time.sleep(0.5)
    assert [r["dequeue_count"] for r in env.records("long", "attempts")] == [1]  # never redelivered


def test_message_encoding_none_passes_text_through(
    env: Env, devhost_factory: DevhostFactory
) -> None:
    devhost_factory(env=env.vars, args=["--no-blobs", "--host-json", "host.none.json"])
    env.client(base64_policy=False).send_message(json.dumps({"key": "plain"}))
    done = wait_for(lambda: env.records("plain", "done"))
    assert isinstance(done, list)
    assert json.loads(done[0]["body"]) == {"key": "plain"}


def test_two_worker_processes_share_the_queue_and_http(
    env: Env, devhost_factory: DevhostFactory
) -> None:
    host = devhost_factory(env=env.vars, args=["--no-blobs", "--workers", "2"])
    assert httpx2.get(f"{host.url}/api/echo/w", timeout=10).status_code == 200
    keys = [f"w{i}" for i in range(16)]
    for key in keys:
        env.send({"key": key, "sleep": 0.5})
    wait_for(lambda: all(env.records(k, "done") for k in keys), timeout=30)
    done = [env.records(k, "done") for k in keys]
    assert all(len(d) == 1 for d in done)  # each message ran once
    pids = {d[0]["pid"] for d in done}
    assert host.proc is not None and host.proc.pid not in pids  # the supervisor runs none
    assert len(pids) == 2  # both worker processes took messages
    host.stop()
    assert host.proc.returncode == 0
