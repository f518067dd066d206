"""/readyz: status for anyone, backend names and errors only for an authenticated caller,
and one probe per few seconds however often it is hit."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import pytest

from functions.health.app import app as health_app
from tests.fixtures.core import Handler


async def readyz(headers: dict[str, str] | None = None) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=health_app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
        return await client.get("/readyz", headers=headers or {})


def refusing(calls: list[str]) -> Handler:
    def handler(req: httpx2.Request) -> httpx2.Response:
        calls.append(str(req.url))
        raise httpx2.ConnectError("refused: secret-internal-host:8000")

    return handler


async def test_details_only_for_a_caller_with_a_configured_key(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("INFER_API_KEYS", "probe-key")
    calls: list[str] = []
    fake_endpoint(refusing(calls))
    r = await readyz()
    assert r.status_code == 503 and r.json() == {"ready": False}
    assert "local" not in r.text and "refused" not in r.text
    r = await readyz({"authorization": "Bearer wrong"})
    assert r.status_code == 503 and r.json() == {"ready": False}
    r = await readyz({"authorization": "Bearer probe-key"})
    assert r.status_code == 503
    assert r.json()["backends"]["local"]["ready"] is False
    assert "error" in r.json()["backends"]["local"]
    assert len(calls) == 1  # three hits, one probe (cached)


async def test_no_inbound_keys_means_no_details_for_anyone(
    fake_endpoint: Callable[[Handler], None],
) -> None:
    def ok(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"object": "list", "data": [{"id": "local-model"}]})

    fake_endpoint(ok)
    r = await readyz({"authorization": "Bearer anything"})
    assert r.status_code == 200 and r.json() == {"ready": True}


async def test_the_probe_is_cached_for_a_few_seconds(
    fake_endpoint: Callable[[Handler], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import service

    calls: list[str] = []
    fake_endpoint(refusing(calls))
    for _ in range(20):
        assert (await readyz()).status_code == 503
    assert len(calls) == 1
    monkeypatch.setattr(service, "READY_CACHE_S", 0.0)
    service.get_service()._ready = None
    await readyz()
    await readyz()
    assert len(calls) == 3  # no cache: every hit probes
