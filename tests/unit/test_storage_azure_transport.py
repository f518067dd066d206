"""The Storage clients' transport: the environment read once, the SDK's own timeouts, one
BlobClient per recently used blob; devhost's listener calls on the host's own threads."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from shared.storage import azure_blob
from shared.storage.azure_conn import sdk_transport
from tests.fixtures.azurite import ACCOUNT, ACCOUNT_KEY
from tools.devhost import queues as devhost_queues

# nothing listens there: building clients sends no request
CONN = (
    f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
    f"BlobEndpoint=http://127.0.0.1:1/{ACCOUNT};"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    return tmp_path


def test_no_proxy_settings_means_no_per_request_environment_lookups(home: Path) -> None:
    transport = sdk_transport({"PATH": "/usr/bin", "FUNCTIONS_WORKER_RUNTIME": "python"})
    assert transport._use_env_settings is False
    assert transport.connection_config.verify is True
    assert transport.connection_config.timeout == 20
    assert transport.connection_config.read_timeout == 60


def test_a_ca_bundle_is_passed_as_the_verify_path_as_requests_would(home: Path) -> None:
    env = {"CURL_CA_BUNDLE": "/b/curl.pem", "REQUESTS_CA_BUNDLE": "/b/requests.pem"}
    transport = sdk_transport(env)
    assert transport._use_env_settings is False
    assert transport.connection_config.verify == "/b/requests.pem"
    assert sdk_transport({"CURL_CA_BUNDLE": "/b/curl.pem"}).connection_config.verify == (
        "/b/curl.pem"
    )


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY", "no_proxy", "NETRC"])
def test_a_proxy_or_netrc_setting_keeps_the_per_request_lookups(home: Path, name: str) -> None:
    transport = sdk_transport({name: "http://proxy.example:3128", "REQUESTS_CA_BUNDLE": "/b.pem"})
    assert transport._use_env_settings is True
    assert transport.connection_config.verify is True  # requests picks the bundle itself


def test_a_netrc_file_keeps_the_per_request_lookups(home: Path) -> None:
    (home / ".netrc").write_text("machine example.com login a password b\n")
    assert sdk_transport({})._use_env_settings is True


def test_blob_clients_are_reused_per_key_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setattr(azure_blob, "BLOB_CLIENTS", 3)
    store = azure_blob.AzureBlobStore("jobs", BlobServiceClient.from_connection_string(CONN))
    first = store._blob("a.json")
    assert store._blob("a.json") is first  # the result write reuses the claim's client
    assert first.blob_name == "a.json" and first.container_name == "jobs"
    for key in ("b.json", "c.json", "d.json"):
        store._blob(key)
    assert store._blob("a.json") is not first  # evicted, least recently used first
    assert list(store._blobs) == ["c.json", "d.json", "a.json"]


def test_devhost_listener_calls_run_on_the_host_threads_and_count_their_cpu() -> None:
    def spin() -> str:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        return threading.current_thread().name

    before = devhost_queues.host_cpu_s()
    name = asyncio.run(devhost_queues._host_call(spin))
    assert name.startswith("devhost-queue")
    assert devhost_queues.host_cpu_s() - before >= 0.04
