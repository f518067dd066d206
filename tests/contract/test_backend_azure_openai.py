"""azure_openai through the chat function, the openai SDK, azure-identity and gpusim."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
import pytest

from tests.fixtures.cloudsim import set_backends
from tests.fixtures.identity import AZURE_KEY, Server

MESSAGES = [{"role": "user", "content": "Say something about GPUs."}]
pytestmark = pytest.mark.usefixtures("cloud_env")


def aoai(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "aoai", "kind": "azure_openai", "endpoint": url, "deployment": "gpt-4o",
            "client_id": "11111111-2222-3333-4444-555555555555", **extra}  # fmt: skip


async def plain_and_streamed(client: Any) -> tuple[str, str]:
    plain = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, seed=7)
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, seed=7, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[0].choices, "the prompt_filter_results chunk must be dropped"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return str(plain.choices[0].message.content), text


async def test_managed_identity_deployments_plain_and_stream(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, identity_server: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aoai(cloudsim.url))
    plain, streamed = await plain_and_streamed(chat_client)
    assert plain and plain == streamed
    assert identity_server.stats()["by_resource"].get("https://cognitiveservices.azure.com")


async def test_key_auth_v1_style(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aoai(cloudsim.url, api_style="v1", auth="key",
                                   api_key_setting="AZURE_TEST_KEY"))  # fmt: skip
    plain, streamed = await plain_and_streamed(chat_client)
    assert plain == streamed


async def test_wrong_key_is_a_502_naming_credentials(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    monkeypatch.setenv("BAD_KEY", "not-the-key")
    set_backends(monkeypatch, aoai(cloudsim.url, auth="key", api_key_setting="BAD_KEY"),
                 INFER_MAX_RETRIES="0")  # fmt: skip
    with pytest.raises(openai.APIStatusError) as info:
        await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.status_code == 502
    assert "refused our credentials" in str(info.value)


async def test_identity_endpoint_asked_once_over_200_calls(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, identity_server: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aoai(cloudsim.url))
    before = identity_server.stats()["requests"]
    for _ in range(4):
        await asyncio.gather(*[
            chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
            for _ in range(50)
        ])  # fmt: skip
    assert identity_server.stats()["requests"] - before == 1


@pytest.mark.parametrize("spoiled", ["expired", "wrong_audience"])
async def test_refused_token_is_refreshed_not_a_failure(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, identity_server: Server,
    chat_client: Any, spoiled: str,
) -> None:  # fmt: skip
    set_backends(monkeypatch, aoai(cloudsim.url), INFER_MAX_RETRIES="0")
    identity_server.faults({"type": spoiled, "count": 1})
    before = identity_server.stats()["tokens_issued"]
    answer = await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.choices[0].message.content
    assert identity_server.stats()["tokens_issued"] - before == 2  # spoiled, then fresh
    again = await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert again.choices[0].message.content
    assert identity_server.stats()["tokens_issued"] - before == 2  # the fresh one is cached


async def test_refused_token_on_a_stream_is_refreshed_before_the_first_byte(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, identity_server: Server, chat_client: Any
) -> None:
    """The 401 retry lives in the httpx2.Auth flow, so it covers streamed requests too."""
    set_backends(monkeypatch, aoai(cloudsim.url), INFER_MAX_RETRIES="0")
    identity_server.faults({"type": "expired", "count": 1})
    before = identity_server.stats()["tokens_issued"]
    stream = await chat_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    assert identity_server.stats()["tokens_issued"] - before == 2  # spoiled, then fresh


async def test_a_second_refusal_is_the_answer_not_another_refresh(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, identity_server: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aoai(cloudsim.url), INFER_MAX_RETRIES="0")
    identity_server.faults({"type": "wrong_audience", "count": 2})
    before = identity_server.stats()["tokens_issued"]
    with pytest.raises(openai.APIStatusError) as info:
        await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.status_code == 502 and "refused our credentials" in str(info.value)
    assert identity_server.stats()["tokens_issued"] - before == 2  # one refresh, no more


async def test_content_filter_reaches_caller_as_400(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, aoai(cloudsim.url))
    with pytest.raises(openai.BadRequestError) as info:
        await chat_client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "say gpusim-blocked"}]
        )
    body: Any = info.value.body
    assert body["code"] == "content_filter"
    assert body["innererror"]["code"] == "ResponsibleAIPolicyViolation"


async def test_429_fails_over_then_circuit_reopens_after_retry_after(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, cloudsim_secondary: Server,
    chat_client: Any,
) -> None:  # fmt: skip
    # retry_after_wait_s 0: a Retry-After is never waited out on the primary here
    primary = aoai(cloudsim.url, name="primary", priority=0, retry_after_wait_s=0)
    secondary = aoai(cloudsim_secondary.url, name="secondary", priority=1)
    set_backends(monkeypatch, primary, secondary, INFER_MAX_RETRIES="0")
    cloudsim.faults({"type": "429", "count": 1, "retry_after": 1})
    cloudsim_secondary.clear_faults()

    def chat_calls(server: Server) -> int:
        requests = server.stats().get("requests", {})
        route = requests.get("/openai/deployments/{deployment}/chat/completions", {})
        return sum(int(v) for v in route.values()) if isinstance(route, dict) else int(route)

    p0, s0 = chat_calls(cloudsim), chat_calls(cloudsim_secondary)
    await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert (chat_calls(cloudsim) - p0, chat_calls(cloudsim_secondary) - s0) == (1, 1)
    await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert (chat_calls(cloudsim) - p0, chat_calls(cloudsim_secondary) - s0) == (1, 2)
    await asyncio.sleep(1.1)
    await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert (chat_calls(cloudsim) - p0, chat_calls(cloudsim_secondary) - s0) == (2, 2)


async def test_no_token_or_key_in_logs(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, identity_server: Server,
    chat_client: Any, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from shared.backends.azure_auth import COGNITIVE_SERVICES_SCOPE, token_source

    caplog.set_level(logging.DEBUG)
    set_backends(
        monkeypatch,
        aoai(cloudsim.url, name="mi"),
        aoai(cloudsim.url, name="key", auth="key", api_key_setting="AZURE_TEST_KEY"),
        INFER_MAX_RETRIES="0",
    )
    identity_server.faults({"type": "expired", "count": 1})
    for _ in range(3):
        await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    cloudsim.faults({"type": "500", "count": 4})  # each backend, and its one quick retry
    with pytest.raises(openai.APIStatusError):
        await chat_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    token = await token_source("11111111-2222-3333-4444-555555555555",
                               COGNITIVE_SERVICES_SCOPE).token()  # fmt: skip
    assert caplog.records, "expected some log output to inspect"
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text
    assert AZURE_KEY not in caplog.text


async def test_an_entry_without_client_id_uses_the_identity_named_by_azure_client_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Flex app with only a user-assigned identity (infra/) has no system-assigned one: a
    backend entry that names no client_id signs in as AZURE_CLIENT_ID's identity."""
    import jwt

    from shared.backends.azure_auth import COGNITIVE_SERVICES_SCOPE, token_source

    monkeypatch.setenv("AZURE_CLIENT_ID", "99999999-8888-7777-6666-555555555555")
    token = await token_source(None, COGNITIVE_SERVICES_SCOPE).token()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["appid"] == "99999999-8888-7777-6666-555555555555"
