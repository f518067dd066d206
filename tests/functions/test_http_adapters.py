"""Each HTTP adapter fed the event shapes its platform really sends.

AWS: API Gateway HTTP API (v2), REST API (v1) and Function URL events through Mangum.
Azure: the decorated functions registered in function_app.py, called the way the Functions
host calls them with HTTP streams enabled (a Starlette request built from an ASGI scope).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import httpx2
import pytest

from tests.fixtures.core import Handler, chat_answer, sse
from tests.fixtures.events import (
    LambdaContext,
    azure_bindings,
    azure_function,
    azure_request,
    load_event,
    send_response,
)


def echo_endpoint(req: httpx2.Request) -> httpx2.Response:
    body = json.loads(req.content)
    if body.get("stream"):
        return httpx2.Response(
            200,
            content=sse(
                {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}, "[DONE]"
            ),
            headers={"content-type": "text/event-stream"},
        )
    if req.url.path.endswith("/models"):
        return httpx2.Response(200, json={"data": [{"id": "local-model"}]})
    return httpx2.Response(200, json=chat_answer(body["model"], "hi from the GPU"))


@pytest.mark.parametrize("event_name", ["apigw_v2_chat", "apigw_v1_chat", "function_url_chat"])
def test_lambda_chat_answers_each_event_shape(
    fake_endpoint: Callable[[Handler], None], event_name: str
) -> None:
    from functions.chat.aws import handler

    fake_endpoint(echo_endpoint)
    out = handler(load_event(event_name), LambdaContext())
    assert out["statusCode"] == 200
    body = base64.b64decode(out["body"]) if out.get("isBase64Encoded") else out["body"]
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"] == "hi from the GPU"


def test_lambda_chat_stream_request_is_buffered_sse(
    fake_endpoint: Callable[[Handler], None],
) -> None:
    from functions.chat.aws import handler

    fake_endpoint(echo_endpoint)
    event = load_event("apigw_v2_chat")
    event["body"] = json.dumps({**json.loads(event["body"]), "stream": True})
    event["headers"]["content-length"] = str(len(event["body"]))
    out = handler(event, LambdaContext())
    assert out["statusCode"] == 200
    assert out["headers"]["content-type"].startswith("text/event-stream")
    assert out["body"].endswith("data: [DONE]\n\n")


def test_lambda_bad_json_is_400_envelope(fake_endpoint: Callable[[Handler], None]) -> None:
    from functions.chat.aws import handler

    fake_endpoint(echo_endpoint)
    event = load_event("apigw_v2_chat")
    event["body"] = "{oops"
    event["headers"]["content-length"] = "5"
    out = handler(event, LambdaContext())
    assert out["statusCode"] == 400
    assert json.loads(out["body"])["error"]["type"] == "invalid_request_error"


def test_lambda_deadline_bounds_the_backend_call(fake_endpoint: Callable[[Handler], None]) -> None:
    """With 0.6 s left in the invocation, a slow endpoint yields 504, not a platform timeout."""
    from functions.chat.aws import handler

    async def slow(req: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(5)
        return httpx2.Response(200, json=chat_answer("local-model"))

    fake_endpoint(slow)  # type: ignore[arg-type]
    import time

    started = time.monotonic()
    out = handler(load_event("apigw_v2_chat"), LambdaContext(timeout_s=0.6))
    assert time.monotonic() - started < 1.5
    assert out["statusCode"] == 504


def test_lambda_models_get(fake_endpoint: Callable[[Handler], None]) -> None:
    from functions.models.aws import handler

    fake_endpoint(echo_endpoint)
    out = handler(load_event("apigw_v2_models"), LambdaContext())
    assert out["statusCode"] == 200
    assert json.loads(out["body"])["object"] == "list"


async def call_azure(
    name: str, method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    request = azure_request(method, path, body)
    return await send_response(request, await azure_function(name)(request))


def test_function_app_registers_every_http_route() -> None:
    routes = {
        name: (
            azure_bindings(name)["bindings"][0].get("route"),
            [str(m) for m in azure_bindings(name)["bindings"][0].get("methods")],
        )
        for name in ("chat", "completions", "embeddings", "models", "healthz", "readyz")
    }
    assert routes["chat"] == ("v1/chat/completions", ["POST"])
    assert routes["models"] == ("v1/models", ["GET"])
    assert routes["healthz"] == ("healthz", ["GET"])


async def test_azure_chat_plain_and_streamed(fake_endpoint: Callable[[Handler], None]) -> None:
    fake_endpoint(echo_endpoint)
    body = json.dumps(
        {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    status, _, content = await call_azure("chat", "POST", "/api/v1/chat/completions", body)
    assert status == 200
    assert json.loads(content)["choices"][0]["message"]["content"] == "hi from the GPU"
    streamed = json.dumps(
        {"model": "local-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    status, headers, content = await call_azure(
        "chat", "POST", "/api/v1/chat/completions", streamed
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert content.endswith(b"data: [DONE]\n\n")


async def test_azure_bad_input_and_health(fake_endpoint: Callable[[Handler], None]) -> None:
    fake_endpoint(echo_endpoint)
    status, _, content = await call_azure(
        "chat",
        "POST",
        "/api/v1/chat/completions",
        b'{"model": "local-model", "messages": []}',
    )
    assert status == 400
    assert json.loads(content)["error"]["param"] == "messages"
    status, _, content = await call_azure("healthz", "GET", "/api/healthz")
    assert status == 200
    status, _, content = await call_azure("models", "GET", "/api/v1/models")
    assert json.loads(content)["data"][0]["id"] == "local-model"


async def test_a_configuration_error_is_not_told_to_an_anonymous_caller(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from functions.chat.app import app
    from shared.lifecycle import reset_all

    clean_env.setenv("INFER_BACKENDS", '[{"name": "b", "kind": "openai"}]')  # no base_url
    reset_all()
    transport = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as c:
        with caplog.at_level("ERROR", logger="shared.web"):
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 500 and r.json()["error"]["code"] == "configuration_error"
    assert "INFER_BACKENDS" not in r.text and "base_url" not in r.text
    assert "INFER_BACKENDS[0]" in caplog.text  # the operator's log names it
    reset_all()
