"""devhost started while storage is down: HTTP serves at once, listeners start once it answers.

As the Functions host: one clear log line per listener that cannot start, retries with
backoff in the background, no restart needed, no traceback.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import httpx2
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from tests.fixtures.azurite import Azurite, start_azurite
from tests.fixtures.devhost import DevhostFactory, wait_for
from tests.fixtures.procs import free_port

pytestmark = pytest.mark.e2e

LISTENERS = (
    "queue listener for function work",
    "blob listener for function batch",
    "blob listener for function big",
)


def started(log: str, listener: str) -> bool:
    return any(f"{listener} " in ln and "started after" in ln for ln in log.splitlines())


def test_http_serves_while_storage_is_down_and_listeners_start_when_it_answers(
    devhost_factory: DevhostFactory, tmp_path: Path
) -> None:
    ports = free_port(), free_port(), free_port()
    down = Azurite(None, *ports)  # type: ignore[arg-type]  # nothing listens there yet
    queue_name = f"q{uuid.uuid4().hex[:12]}"
    env = {
        "AzureWebJobsStorage": down.connection_string,
        "DEVHOST_TEST_QUEUE": queue_name,
        "DEVHOST_TEST_CONTAINER": f"c{uuid.uuid4().hex[:12]}",
        "DEVHOST_TEST_OUT": str(tmp_path),
    }
    host = devhost_factory(env=env, args=["--listener-retry-max", "2"])  # waits for HTTP

    r = httpx2.get(f"{host.url}/api/echo/up", timeout=10)
    assert r.status_code == 200 and r.json()["id"] == "up"
    wait_for(lambda: all(f"{name} " in host.log() for name in LISTENERS), timeout=30)
    log = host.log()
    for name in LISTENERS:
        (line,) = [ln for ln in log.splitlines() if f"{name} " in ln]  # one line each so far
        assert "cannot start" in line and "Connection refused" in line
    assert "Traceback" not in log

    azurite = start_azurite(*ports, tmp_path / "azurite")
    try:
        client = QueueClient.from_connection_string(
            azurite.connection_string, queue_name, message_encode_policy=TextBase64EncodePolicy()
        )
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        client.send_message(json.dumps({"key": "after"}))
        done = tmp_path / "after.done"
        wait_for(done.exists, timeout=90)
        assert json.loads(done.read_text().splitlines()[0])["dequeue_count"] == 1
        wait_for(lambda: all(started(host.log(), n) for n in LISTENERS), timeout=30)
        assert host.proc is not None and host.proc.poll() is None  # never restarted
    finally:
        azurite.process.kill()
