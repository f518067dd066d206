"""Azure OpenAI without a fixed ``deployment``: the caller's model is checked, then quoted."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx2
import pytest

from functions.chat.app import app as chat_app
from tests.fixtures.core import Handler, chat_answer

AOAI = {"name": "aoai", "kind": "azure_openai", "endpoint": "https://res.openai.azure.com",
        "auth": "key", "api_key_setting": "AOAI_KEY", "models": ["*"]}  # fmt: skip


async def chat(model: object) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    transport = httpx2.ASGITransport(app=chat_app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
        return await client.post("/v1/chat/completions", json=body)


@pytest.fixture
def seen(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> list[httpx2.URL]:
    clean_env.setenv("INFER_BACKENDS", json.dumps([AOAI]))
    clean_env.setenv("AOAI_KEY", "k")
    urls: list[httpx2.URL] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        urls.append(req.url)
        return httpx2.Response(200, json=chat_answer("gpt-4o"))

    fake_endpoint(handler)
    return urls


@pytest.mark.parametrize(
    "model",
    ["../../../management", "gpt/../../x", "a?api-version=1", "a#b", "a%2Fb", "..", ".hidden",
     "x" * 65, "with space"],
)  # fmt: skip
async def test_a_model_that_is_not_a_deployment_name_is_400(
    seen: list[httpx2.URL], model: str
) -> None:
    r = await chat(model)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "model"
    assert seen == []  # nothing reached the resource


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o.mini_v2", "GPT4", "a"])
async def test_a_valid_name_is_the_path_segment(seen: list[httpx2.URL], model: str) -> None:
    r = await chat(model)
    assert r.status_code == 200, r.text
    assert seen[0].path == f"/openai/deployments/{model}/chat/completions"
