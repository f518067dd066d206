"""azureml (/score) through the chat function, azure-identity and gpusim."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fixtures.cloudsim import set_backends
from tests.fixtures.identity import Server

MESSAGES = [{"role": "user", "content": "Tell me about endpoints."}]
pytestmark = pytest.mark.usefixtures("cloud_env")


def aml(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "aml", "kind": "azureml", "scoring_url": url + "/score",
            "deployment": "blue", **extra}  # fmt: skip


async def chat_both(client: Any) -> tuple[str, str, Any]:
    plain = await client.chat.completions.create(model="llama", messages=MESSAGES, seed=3)
    stream = await client.chat.completions.create(
        model="llama", messages=MESSAGES, seed=3, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return str(plain.choices[0].message.content), text, chunks[-1].usage


@pytest.mark.parametrize("payload", ["openai_chat", "tgi"])
async def test_managed_identity_plain_and_stream(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, identity_server: Server,
    chat_client: Any, payload: str,
) -> None:  # fmt: skip
    set_backends(monkeypatch, aml(cloudsim.url, payload=payload))
    plain, streamed, usage = await chat_both(chat_client)
    assert plain and plain == streamed
    assert usage is not None and usage.completion_tokens > 0
    assert identity_server.stats()["by_resource"].get("https://ml.azure.com")


async def test_key_auth(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aml(cloudsim.url, auth="key", api_key_setting="AZURE_TEST_KEY"))
    plain, streamed, _ = await chat_both(chat_client)
    assert plain == streamed


async def test_container_error_424_is_retried_then_502(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aml(cloudsim.url), INFER_MAX_RETRIES="1")
    cloudsim.faults({"type": "500", "count": 4})  # two tries, each a call and its quick retry
    before = cloudsim.stats()["requests"].get("/score", {})
    with pytest.raises(openai.APIStatusError) as info:
        await chat_client.chat.completions.create(model="llama", messages=MESSAGES)
    assert info.value.status_code == 502
    assert "failed with 500" in str(info.value)
    after = cloudsim.stats()["requests"]["/score"]
    assert int(after.get("424", 0)) - int(before.get("424", 0)) == 4  # retried once


async def test_429_too_many_pending_is_rate_limited(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aml(cloudsim.url), INFER_MAX_RETRIES="0")
    # 3 s: longer than the backend's retry_after_wait_s (2 s), so not waited out here
    cloudsim.faults({"type": "429", "count": 1, "retry_after": 3})
    with pytest.raises(openai.RateLimitError) as info:
        await chat_client.chat.completions.create(model="llama", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "3"
