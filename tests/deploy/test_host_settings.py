"""host.json (the Azure Functions host) and local.settings.json (never a real secret)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.fixtures.procs import ROOT

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Values that are configuration, not credentials, even though some look like tokens.
NON_SECRET_VALUES = {"UseDevelopmentStorage=true", "python", "EnableWorkerIndexing"}
SECRET_PATTERNS = [
    re.compile(r"AccountKey=", re.I),
    re.compile(r"SharedAccessSignature=|[?&]sig=", re.I),
    re.compile(r"InstrumentationKey=[0-9a-f-]{36}", re.I),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bey[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\."),  # a JWT
    re.compile(r"^[A-Za-z0-9+/]{40,}={0,2}$"),  # a bare base64 key
]
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CONNECTION_?STRING)$", re.I)


def _timespan(value: str) -> timedelta:
    h, m, s = (int(x) for x in value.split(":"))
    return timedelta(hours=h, minutes=m, seconds=s)


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "host.json").read_text())
    return data


def test_host_json_is_v2_with_the_v4_extension_bundle(host: dict[str, Any]) -> None:
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    assert host["extensions"]["http"]["routePrefix"] == "api"


def test_function_timeout_fits_consumption(host: dict[str, Any]) -> None:
    timeout = _timespan(host["functionTimeout"])
    assert timedelta(0) < timeout <= timedelta(minutes=10)


def test_queue_settings_match_the_design(host: dict[str, Any]) -> None:
    queues = host["extensions"]["queues"]
    assert queues["maxDequeueCount"] == 5
    assert 1 <= queues["batchSize"] <= 32
    assert 0 <= queues["newBatchThreshold"] <= queues["batchSize"]
    assert queues["messageEncoding"] == "base64"
    assert _timespan(queues["visibilityTimeout"]) == timedelta(seconds=10)
    assert _timespan(queues["maxPollingInterval"]) <= timedelta(seconds=2)


def test_request_telemetry_is_not_sampled(host: dict[str, Any]) -> None:
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert "Request" in sampling["excludedTypes"].split(";")


def secret_findings(values: dict[str, str]) -> list[str]:
    """Settings that look like a credential rather than local, loopback-only configuration."""
    found = []
    for name, value in values.items():
        text = str(value)
        if text in NON_SECRET_VALUES or text == "":
            continue
        if any(p.search(text) for p in SECRET_PATTERNS):
            found.append(f"{name}: looks like a credential")
        if SECRET_NAME.search(name) and not text.startswith("UseDevelopmentStorage"):
            found.append(f"{name}: a secret-named setting with a value")
        for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"',]+", text):
            parsed = urlparse(url)
            remote = parsed.hostname and parsed.hostname not in LOOPBACK
            if parsed.scheme in ("http", "https", "redis", "rediss") and remote:
                found.append(f"{name}: non-loopback URL {url}")
            if parsed.password:
                found.append(f"{name}: URL with a password")
        if name == "INFER_BACKENDS":
            for backend in json.loads(text):
                if "api_key" in backend or "key" in backend:
                    found.append(f"{name}: backend {backend.get('name')} holds a key")
    return found


def test_local_settings_hold_no_secret() -> None:
    settings = json.loads((ROOT / "local.settings.json").read_text())
    assert settings["IsEncrypted"] is False
    assert settings["Values"]["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert secret_findings(settings["Values"]) == []
    assert "ConnectionStrings" not in settings or not settings["ConnectionStrings"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (
            "AzureWebJobsStorage",
            "DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=bm90IGEga2V5;",
        ),
        (
            "INFER_BACKENDS",
            '[{"name":"a","kind":"openai","base_url":"https://api.example.com/v1"}]',
        ),
        (
            "INFER_BACKENDS",
            '[{"name":"a","kind":"openai","base_url":"http://127.0.0.1/v1","api_key":"x"}]',
        ),
        ("OPENAI_API_KEY", "sk-live-0123456789abcdefghij"),
        ("INFER_STATE_URL", "redis://:hunter2@127.0.0.1:6379/0"),
        ("BLOB_SAS", "https://127.0.0.1:10000/c/b?sv=2024&sig=abc"),
    ],
)
def test_secret_check_catches_real_credentials(name: str, value: str) -> None:
    assert secret_findings({name: value})
