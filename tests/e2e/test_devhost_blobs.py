"""Blob triggers through devhost against Azurite: streamed input, receipts, poison."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from tests.fixtures.azurite import Azurite
from tests.fixtures.devhost import DevhostFactory, DevhostProcess, wait_for
from tools.devhost.blobs import POISON_QUEUE

pytestmark = pytest.mark.e2e


class Env:
    def __init__(self, azurite: Azurite, out: Path) -> None:
        self.azurite = azurite
        self.out = out
        self.container = f"c{uuid.uuid4().hex[:12]}"
        self.vars = {
            "AzureWebJobsStorage": azurite.connection_string,
            "DEVHOST_TEST_QUEUE": f"q{uuid.uuid4().hex[:12]}",
            "DEVHOST_TEST_CONTAINER": self.container,
            "DEVHOST_TEST_OUT": str(out),
        }

    def upload(self, name: str, data: bytes) -> None:
        service = self.azurite.blob_service()
        service.get_container_client(self.container).upload_blob(name, data, overwrite=True)

    def calls(self, stem: str) -> list[dict[str, Any]]:
        path = self.out / f"blob-{stem}.calls"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def poison_messages(self) -> list[dict[str, Any]]:
        client = QueueClient.from_connection_string(self.azurite.connection_string, POISON_QUEUE)
        try:
            peeked = client.peek_messages(max_messages=32)
        except ResourceNotFoundError:
            return []
        messages = [json.loads(base64.b64decode(m.content)) for m in peeked]
        return [m for m in messages if m["ContainerName"] == self.container]


@pytest.fixture
def env(azurite: Azurite, tmp_path: Path) -> Env:
    return Env(azurite, tmp_path)


@pytest.fixture
def host(env: Env, devhost_factory: DevhostFactory) -> DevhostProcess:
    return devhost_factory(env=env.vars, args=["--no-queues", "--blob-poll-interval", "0.2"])


def _jsonl(lines: int) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "pad": "x" * 200}).encode() + b"\n" for i in range(lines)
    )


def test_new_blob_is_processed_once_across_restarts(env: Env, host: DevhostProcess) -> None:
    data = _jsonl(12000)  # ~2.6 MB: several download chunks
    env.upload("input.jsonl", data)
    env.upload("ignored.txt", b"not matching the path pattern")
    wait_for(lambda: env.calls("input.jsonl"), timeout=20)
    (call,) = env.calls("input.jsonl")
    assert call["name"] == f"{env.container}/input.jsonl"
    assert call["length"] == len(data)
    assert call["uri"].endswith(f"/{env.container}/input.jsonl")
    assert call["lines"] == 12000
    assert call["sha256"] == hashlib.sha256(data).hexdigest()
    # What the worker passes: the library's InputStream over the whole blob (in memory).
    assert call["stream_type"] == "azure.functions.blob.InputStream"
    assert call["properties"]["ContentLength"] == len(data)
    # the output binding filled {name} from the trigger path
    out = env.azurite.blob_service().get_blob_client(f"{env.container}-out", "input.count")
    wait_for(out.exists)  # outputs are written after the function returns
    assert out.download_blob().readall() == b"12000"

    host.restart()
    env.upload("second.jsonl", _jsonl(2))  # proves the restarted host scans
    wait_for(lambda: env.calls("second.jsonl"), timeout=20)
    assert len(env.calls("input.jsonl")) == 1  # the receipt kept it from running again
    assert not (env.out / "blob-ignored.txt.calls").exists()


def test_sdk_type_parameter_gets_a_blob_client_and_no_content(
    env: Env, host: DevhostProcess
) -> None:
    data = os.urandom(3 * (1 << 20) + 123)
    env.upload("large.big", data)
    wait_for(lambda: env.calls("large.big"), timeout=20)
    (call,) = env.calls("large.big")
    # The extension's converter built it from ModelBindingData, as deployed: an SDK client.
    assert call["type"] == "azure.storage.blob._blob_client.BlobClient"
    assert (call["container"], call["blob"]) == (env.container, "large.big")
    assert call["bytes"] == len(data)
    assert call["sha256"] == hashlib.sha256(data).hexdigest()
    assert call["largest_chunk"] == 1 << 20  # the function read it by ranges


def test_overwritten_blob_is_a_new_version_and_runs_again(env: Env, host: DevhostProcess) -> None:
    env.upload("v.jsonl", _jsonl(1))
    wait_for(lambda: env.calls("v.jsonl"))
    env.upload("v.jsonl", _jsonl(3))
    wait_for(lambda: len(env.calls("v.jsonl")) == 2)
    assert [c["lines"] for c in env.calls("v.jsonl")] == [1, 3]


def test_failing_blob_is_retried_then_poisoned(env: Env, host: DevhostProcess) -> None:
    env.upload("fail-1.jsonl", _jsonl(1))
    wait_for(env.poison_messages, timeout=20)
    (poison,) = env.poison_messages()
    assert poison["BlobName"] == "fail-1.jsonl"
    assert poison["FunctionId"] == "Host.Functions.batch"
    assert len(env.calls("fail-1.jsonl")) == 3  # host.json maxDequeueCount
    host.restart()
    env.upload("after.jsonl", _jsonl(1))
    wait_for(lambda: env.calls("after.jsonl"))
    assert len(env.calls("fail-1.jsonl")) == 3  # poisoned blobs are not retried
