"""sagemaker through the chat function, boto3 (SigV4, event streams) and gpusim."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.fixtures.cloudsim import set_backends
from tests.fixtures.identity import Server

MESSAGES = [{"role": "user", "content": "Explain event streams."}]
pytestmark = pytest.mark.usefixtures("cloud_env")


def sm(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "sm", "kind": "sagemaker", "endpoint_name": "llm-endpoint",
            "region": "us-east-1", "endpoint_url": url, **extra}  # fmt: skip


async def chat_both(client: Any, **kw: Any) -> tuple[str, str, Any]:
    plain = await client.chat.completions.create(model="llama", messages=MESSAGES, seed=5, **kw)
    stream = await client.chat.completions.create(
        model="llama", messages=MESSAGES, seed=5, stream=True,
        stream_options={"include_usage": True}, **kw,
    )  # fmt: skip
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return str(plain.choices[0].message.content), text, chunks[-1].usage


@pytest.mark.parametrize("payload", ["messages", "tgi"])
async def test_plain_and_stream_split_at_7_byte_parts(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any, payload: str
) -> None:
    """cloudsim re-cuts every stream into 7-byte PayloadParts: lines and UTF-8 split anywhere."""
    set_backends(monkeypatch, sm(cloudsim.url, payload=payload, inference_component="ic-1"))
    plain, streamed, usage = await chat_both(chat_client)
    assert plain and plain == streamed
    assert usage is not None and usage.completion_tokens > 0


async def test_stream_unsplit_matches_split(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, cloudsim_secondary: Server,
    chat_client: Any,
) -> None:  # fmt: skip
    set_backends(monkeypatch, sm(cloudsim.url))
    _, split, _ = await chat_both(chat_client)
    set_backends(monkeypatch, sm(cloudsim_secondary.url))
    _, whole, _ = await chat_both(chat_client)
    assert split == whole


async def test_bad_signature_is_502_naming_credentials(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    set_backends(monkeypatch, sm(cloudsim.url), INFER_MAX_RETRIES="0")
    with pytest.raises(openai.APIStatusError) as info:
        await chat_client.chat.completions.create(model="llama", messages=MESSAGES)
    assert info.value.status_code == 502
    assert "refused our credentials" in str(info.value)


async def test_model_error_500_is_retried_and_recovers(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, chat_client: Any
) -> None:
    set_backends(monkeypatch, sm(cloudsim.url), INFER_MAX_RETRIES="2")
    cloudsim.faults({"type": "500", "count": 1})
    answer = await chat_client.chat.completions.create(model="llama", messages=MESSAGES)
    assert answer.choices[0].message.content


async def test_429_fails_over_and_primary_is_probed_after_retry_after(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, cloudsim_secondary: Server,
    chat_client: Any,
) -> None:  # fmt: skip
    route = "/endpoints/{name}/invocations"

    def calls(server: Server) -> int:
        return sum(int(v) for v in server.stats()["requests"].get(route, {}).values())

    # retry_after_wait_s 0: the Retry-After is not waited out on the primary
    set_backends(monkeypatch, sm(cloudsim.url, name="primary", retry_after_wait_s=0),
                 sm(cloudsim_secondary.url, name="secondary", priority=1),
                 INFER_MAX_RETRIES="0")  # fmt: skip
    cloudsim.faults({"type": "429", "count": 1, "retry_after": 2})
    p0, s0 = calls(cloudsim), calls(cloudsim_secondary)
    for _ in range(2):
        await chat_client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=2)
    assert (calls(cloudsim) - p0, calls(cloudsim_secondary) - s0) == (1, 2)
    await asyncio.sleep(2.1)  # the two calls above must fit in the 2 s (a loaded machine)
    await chat_client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=2)
    assert (calls(cloudsim) - p0, calls(cloudsim_secondary) - s0) == (2, 2)


async def test_bad_backend_entry_fails_at_first_use_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, chat_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    set_backends(monkeypatch, {"name": "sm", "kind": "sagemaker", "region": "us-east-1"})
    with caplog.at_level("ERROR", logger="shared.web"), pytest.raises(
        openai.InternalServerError
    ) as info:
        await chat_client.chat.completions.create(model="llama", messages=MESSAGES)
    assert "misconfigured" in str(info.value)  # the caller is told no detail
    assert "INFER_BACKENDS[0] (kind sagemaker): field 'endpoint_name'" in caplog.text
