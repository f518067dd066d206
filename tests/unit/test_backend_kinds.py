"""Adding a backend kind takes one module and one registry line.

``tests/toykind.py`` is that module; the test adds the registry line, configures the kind in
``INFER_BACKENDS`` and serves chat requests through the chat function's app (the real
Service, router and HTTP path) to gpusim. Settings validation, error messages and the kind
lists come from the registry, so nothing else is touched.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest

from functions.chat.app import app as chat_app
from shared.backends import registry
from shared.errors import ConfigError
from shared.lifecycle import reset_all
from shared.settings import load_settings
from tests.fixtures.gpusim import Gpusim

MSG = {"model": "toy-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture
def toy_kind(clean_env: pytest.MonkeyPatch) -> Iterator[None]:
    registry.register("toy", "tests.toykind:ToyBackend")  # the one registry line
    yield
    registry.KINDS.pop("toy", None)
    reset_all()


def toy_entry(url: str, **extra: object) -> dict[str, object]:
    return {"name": "toy1", "kind": "toy", "url": url, "upstream_model": "local-model",
            "models": ["toy-model"], **extra}  # fmt: skip


async def post(body: dict[str, object]) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=chat_app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn", timeout=30) as c:
        return await c.post("/v1/chat/completions", json=body)


async def test_a_registered_kind_serves_chat_through_the_service(
    toy_kind: None, clean_env: pytest.MonkeyPatch, gpusim: Gpusim
) -> None:
    clean_env.setenv("INFER_BACKENDS", json.dumps([toy_entry(gpusim.url)]))
    reset_all()
    before = gpusim.stats()["requests"].get("/v1/chat/completions", {}).get("200", 0)

    plain = await post(MSG)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    assert answer["system_fingerprint"] == "toy:toy1"  # the kind's decode hook
    assert answer["model"] == "local-model"  # what its encode hook asked the endpoint for
    assert answer["choices"][0]["message"]["content"]

    streamed = await post({**MSG, "stream": True})
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert '"chat.completion.chunk"' in streamed.text
    after = gpusim.stats()["requests"]["/v1/chat/completions"]["200"]
    assert after - before == 2


def test_its_config_is_validated_by_its_own_class_imported_on_demand(
    toy_kind: None, clean_env: pytest.MonkeyPatch
) -> None:
    sys.modules.pop("tests.toykind", None)
    clean_env.setenv("INFER_BACKENDS", json.dumps([{"name": "t", "kind": "openai",
                                                    "base_url": "http://x/v1"}]))  # fmt: skip
    load_settings()
    assert "tests.toykind" not in sys.modules  # a kind nobody configured is never imported

    clean_env.setenv("INFER_BACKENDS", json.dumps([toy_entry("ftp://x")]))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "INFER_BACKENDS[0] (kind toy): field 'url'" in info.value.message

    clean_env.setenv("INFER_BACKENDS", '[{"name": "x", "kind": "vertex"}]')
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "expected one of openai, azure_openai, azureml, sagemaker, toy" in info.value.message

    clean_env.setenv("INFER_BACKENDS", json.dumps([toy_entry("http://sim")]))
    (backend,) = load_settings().backends
    assert type(backend).__name__ == "ToyBackendConfig" and backend.provider == "toy.provider"


def test_a_kind_missing_a_required_hook_is_refused_when_built() -> None:
    from shared.backends.base import BaseBackend
    from shared.backends.http import HttpBackend

    class NoSend(BaseBackend[Any]):  # neither send nor send_stream
        pass

    class NoUrl(HttpBackend[Any]):  # an HTTP kind must say where requests go
        pass

    config = SimpleNamespace(name="x", auth="none")
    with pytest.raises(TypeError, match="send"):
        NoSend(config)
    with pytest.raises(TypeError, match="url"):
        NoUrl(config)
