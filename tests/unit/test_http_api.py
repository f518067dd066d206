"""The HTTP API through the chat function's app, with the endpoint faked in-process.

Bad input is answered with the right status and OpenAI's envelope, never a 500; streams
are retried only before their first byte and end with an error event after it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest

from functions.chat.app import app as chat_app
from functions.embeddings.app import app as embeddings_app
from functions.health.app import app as health_app
from functions.models.app import app as models_app
from shared.lifecycle import reset_all
from tests.fixtures.core import Handler, chat_answer, sse

MSG = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}


async def post(app: object, path: str, **kw: object) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
        return await client.post(path, **kw)  # type: ignore[arg-type]


async def get(app: object, path: str, **kw: object) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
        return await client.get(path, **kw)  # type: ignore[arg-type]


def assert_envelope(r: httpx2.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    return err  # type: ignore[no-any-return]


async def test_plain_chat_passes_the_body_through_unchanged(
    fake_endpoint: Callable[[Handler], None],
) -> None:
    seen: list[dict[str, object]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(req.content))
        return httpx2.Response(200, json={**chat_answer("local-model"), "system_fingerprint": "fp"})

    fake_endpoint(handler)
    r = await post(chat_app, "/v1/chat/completions", json={**MSG, "logprobs": True})
    assert r.status_code == 200
    assert r.json()["system_fingerprint"] == "fp"
    assert seen[0]["logprobs"] is True
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"content": b"{not json"}, 400, None),
        ({"content": b""}, 400, None),
        ({"json": {"model": "local-model"}}, 400, "messages"),
        ({"json": {**MSG, "max_tokens": -1}}, 400, "max_tokens"),
        ({"json": {**MSG, "max_tokens": 10**7}}, 400, "max_tokens"),
        ({"json": {**MSG, "max_tokens": "many"}}, 400, "max_tokens"),
        ({"json": {**MSG, "messages": [{"role": 7}]}}, 400, "messages[0].role"),
        ({"json": [1, 2, 3]}, 400, None),
        ({"content": b'{"model": "' + b"x" * 2_000_000 + b'"}'}, 413, None),
    ],
)
async def test_bad_input_gets_status_and_envelope_never_500(
    fake_endpoint: Callable[[Handler], None],
    kwargs: dict[str, object],
    status: int,
    param: str | None,
) -> None:
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    r = await post(chat_app, "/v1/chat/completions", **kwargs)
    assert_envelope(r, status, param)


async def test_unknown_model_is_404(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(
        "INFER_BACKENDS",
        '[{"name": "v", "kind": "openai", "base_url": "http://x/v1", "models": ["only"]}]',
    )
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("only")))
    r = await post(chat_app, "/v1/chat/completions", json=MSG)
    err = assert_envelope(r, 404, "model")
    assert err["code"] == "model_not_found"


async def test_wrong_method_and_path_use_the_envelope(
    fake_endpoint: Callable[[Handler], None],
) -> None:
    assert_envelope(await get(chat_app, "/v1/chat/completions"), 405)
    assert_envelope(await post(chat_app, "/v1/nothing", json=MSG), 404)


async def test_bad_backend_config_is_a_clear_500_not_a_crash(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("INFER_BACKENDS", '[{"name": "x", "kind": "openai"}]')
    with caplog.at_level("ERROR", logger="shared.web"):
        r = await post(chat_app, "/v1/chat/completions", json=MSG)
    err = assert_envelope(r, 500)
    assert err["code"] == "configuration_error"
    # named in the operator's log; an anonymous caller only learns it is misconfigured
    assert "INFER_BACKENDS[0] (kind openai): field 'base_url'" in caplog.text
    assert "base_url" not in str(err["message"])


async def test_endpoint_errors_map_to_gateway_statuses(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("INFER_MAX_RETRIES", "0")
    answers = iter(
        [
            httpx2.Response(429, headers={"retry-after": "7"}, json={"error": {"message": "slow"}}),
            httpx2.Response(503, json={"error": {"message": "down"}}),
            httpx2.Response(503, json={"error": {"message": "down"}}),  # its one quick retry
            httpx2.Response(
                400,
                json={
                    "error": {
                        "message": "blocked",
                        "type": "invalid_request_error",
                        "code": "content_filter",
                        "param": "prompt",
                        "innererror": {"code": "ResponsibleAIPolicyViolation"},
                    }
                },
            ),
            httpx2.Response(401, json={"error": {"message": "bad key sk-123"}}),
        ]
    )

    def handler(req: httpx2.Request) -> httpx2.Response:
        return next(answers)

    fake_endpoint(handler)

    async def fresh_call() -> httpx2.Response:
        reset_all()  # a fresh router: no circuit left open by the previous answer
        return await post(chat_app, "/v1/chat/completions", json=MSG)

    r = await fresh_call()
    assert_envelope(r, 429)
    assert r.headers["retry-after"] == "7"
    assert_envelope(await fresh_call(), 503)
    err = assert_envelope(await fresh_call(), 400, "prompt")
    assert err["code"] == "content_filter"
    assert err["innererror"] == {"code": "ResponsibleAIPolicyViolation"}
    r = await fresh_call()
    err = assert_envelope(r, 502)
    assert "sk-123" not in r.text  # the endpoint's words about our credential are not relayed


async def test_connection_errors_are_retried_then_502(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("INFER_MAX_RETRIES", "1")
    calls = 0

    def handler(req: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx2.ConnectError("reset")
        return httpx2.Response(200, json=chat_answer("local-model"))

    fake_endpoint(handler)
    r = await post(chat_app, "/v1/chat/completions", json=MSG)
    assert r.status_code == 200
    assert calls == 2


async def test_stream_retried_before_first_byte(fake_endpoint: Callable[[Handler], None]) -> None:
    calls = 0
    body = sse({"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}, "[DONE]")

    def handler(req: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx2.Response(
                503, headers={"retry-after-ms": "10"}, json={"error": {"message": "warming"}}
            )
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    fake_endpoint(handler)
    r = await post(chat_app, "/v1/chat/completions", json={**MSG, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.content == body
    assert calls == 2


class _Broken(httpx2.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield sse({"id": "c", "choices": [{"index": 0, "delta": {"content": "par"}}]})
        raise httpx2.ReadError("connection reset mid-stream")

    async def aclose(self) -> None:
        return None


async def test_a_stream_that_keeps_breaking_ends_with_an_error_event_not_done(
    fake_endpoint: Callable[[Handler], None],
) -> None:
    """Every try is continued from what the caller has; when the tries run out, an error
    event ends the stream and no [DONE] presents the partial answer as whole."""
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(req.content))
        return httpx2.Response(200, stream=_Broken(), headers={"content-type": "text/event-stream"})

    fake_endpoint(handler)
    r = await post(chat_app, "/v1/chat/completions", json={**MSG, "stream": True})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[0].startswith('data: {"id": "c"')
    last = json.loads(events[-1][len("data: ") :])
    assert last["error"]["code"] == "backend_connection_error"
    assert "[DONE]" not in r.text
    assert len(bodies) == 1 + 1 + 2  # the first try, then INFER_MAX_RETRIES + 1 recoveries
    first_resume = bodies[1]
    assert first_resume["messages"][-1] == {"role": "assistant", "content": "par"}
    assert first_resume["continue_final_message"] is True
    assert first_resume["add_generation_prompt"] is False
    assert bodies[2]["messages"][-1]["content"] == "parpar"  # from all the caller has


async def test_inbound_api_keys(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("INFER_API_KEYS", "alpha,beta")
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    assert_envelope(await post(chat_app, "/v1/chat/completions", json=MSG), 401)
    bad = {"authorization": "Bearer nope"}
    assert_envelope(await post(chat_app, "/v1/chat/completions", json=MSG, headers=bad), 401)
    ok = await post(
        chat_app, "/v1/chat/completions", json=MSG, headers={"authorization": "Bearer beta"}
    )
    assert ok.status_code == 200
    ok = await post(chat_app, "/v1/chat/completions", json=MSG, headers={"api-key": "alpha"})
    assert ok.status_code == 200


async def test_served_model_is_asked_for_and_the_answer_names_it(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(
        "INFER_BACKENDS",
        '[{"name": "v", "kind": "openai", "base_url": "http://x/v1", "models": ["chat"],'
        ' "served_model": "meta-llama/Llama-3.1-8B-Instruct"}]',
    )
    seen: list[str] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        model = json.loads(req.content)["model"]
        seen.append(model)
        return httpx2.Response(200, json=chat_answer(model))

    fake_endpoint(handler)
    r = await post(chat_app, "/v1/chat/completions", json={**MSG, "model": "chat"})
    assert seen == ["meta-llama/Llama-3.1-8B-Instruct"]
    # the model that produced the answer, as OpenAI names the snapshot; the backend by name
    assert r.json()["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert r.headers["x-infer-backend"] == "v"


class _SplitStream(httpx2.AsyncByteStream):
    """Chunks cut mid-line and mid-name, as a network may deliver them."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._body), 7):
            yield self._body[i : i + 7]


async def test_streams_split_anywhere_reach_the_caller_as_sent(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    served = "meta-llama/Llama-3.1-8B-Instruct"
    clean_env.setenv(
        "INFER_BACKENDS",
        '[{"name": "v", "kind": "openai", "base_url": "http://x/v1", "models": ["chat"],'
        f' "served_model": "{served}"}}]',
    )
    chunk = {"id": "c", "model": served, "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    body = sse(chunk, chunk, "[DONE]")
    fake_endpoint(
        lambda req: httpx2.Response(
            200, stream=_SplitStream(body), headers={"content-type": "text/event-stream"}
        )
    )
    r = await post(chat_app, "/v1/chat/completions", json={**MSG, "model": "chat", "stream": True})
    assert r.text == body.decode()  # whole events, byte for byte, however the network cut them
    assert r.headers["x-infer-backend"] == "v"


async def test_models_health_and_embeddings(fake_endpoint: Callable[[Handler], None]) -> None:
    def handler(req: httpx2.Request) -> httpx2.Response:
        if req.url.path.endswith("/models"):
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "local-model"}]})
        return httpx2.Response(
            200, json={"object": "list", "data": [{"embedding": [0.1], "index": 0}]}
        )

    fake_endpoint(handler)
    models = (await get(models_app, "/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["local-model"]
    assert (await get(health_app, "/healthz")).json() == {"status": "ok"}
    ready = await get(health_app, "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    r = await post(embeddings_app, "/v1/embeddings", json={"model": "local-model", "input": "x"})
    assert r.json()["data"][0]["embedding"] == [0.1]


async def test_readyz_is_503_when_no_backend_answers(
    fake_endpoint: Callable[[Handler], None],
) -> None:
    def handler(req: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused")

    fake_endpoint(handler)
    r = await get(health_app, "/readyz")
    assert r.status_code == 503
    assert r.json() == {"ready": False}  # details only for an authenticated caller


async def test_a_continued_stream_is_billed_to_the_backend_that_finished_it(
    fake_endpoint: Callable[[Handler], None],
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Cut on ``a`` (which then fails twice: the quick retry too), continued on ``b``: the
    caller gets one answer with one id; the token metrics name ``b`` and count what the
    caller received; ``a``'s tries are each recorded, none as a completion."""
    clean_env.setenv("INFER_BACKENDS", json.dumps([
        {"name": "a", "kind": "openai", "base_url": "http://a/v1", "models": ["local-model"]},
        {"name": "b", "kind": "openai", "base_url": "http://b/v1", "models": ["local-model"],
         "priority": 1},
    ]))  # fmt: skip
    clean_env.setenv("INFER_METRICS_EMF", "true")
    reset_all()
    seen: list[str] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append(req.url.host)
        if req.url.host == "a":
            if len(seen) == 1:
                return httpx2.Response(200, stream=_Broken(),
                                      headers={"content-type": "text/event-stream"})  # fmt: skip
            return httpx2.Response(500, json={"error": {"message": "down"}})
        assert json.loads(req.content)["messages"][-1]["content"] == "par"
        rest = {"id": "other", "model": "m-b", "choices": [{"index": 0, "delta": {"content": "t"}}]}
        role = {"id": "other", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        usage = {"id": "other", "choices": [],
                 "usage": {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}}
        return httpx2.Response(200, content=sse(role, rest, usage, "[DONE]"),
                              headers={"content-type": "text/event-stream"})  # fmt: skip

    fake_endpoint(handler)
    r = await post(chat_app, "/v1/chat/completions", json={**MSG, "stream": True})
    reset_all()  # flushes telemetry
    assert seen == ["a", "a", "a", "b"]
    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
    assert {e["id"] for e in events} == {"c"} and r.text.endswith("data: [DONE]\n\n")
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "part"
    assert not any("usage" in e for e in events)  # the caller did not ask for it
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{") and "_aws" in line]  # fmt: skip
    tokens = [d for d in docs if "gen_ai.client.token.usage.output" in d]
    assert [(d["backend"], d["gen_ai.client.token.usage.output"]) for d in tokens] == [("b", 2.0)]
    tries = {d["backend"]: len(v) if isinstance(v := d["gen_ai.client.operation.duration"], list)
             else 1 for d in docs if "gen_ai.client.operation.duration" in d}  # fmt: skip
    assert tries == {"a": 3, "b": 1}  # a's broken try and its two 500s, each one try


async def test_usage_null_on_every_chunk_passes_through_and_only_the_usage_event_is_dropped(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    """With include_usage (always asked upstream) OpenAI puts ``"usage":null`` on every
    chunk and the usage in one last event: a caller that did not ask gets every chunk as the
    endpoint sent it, and not the usage event; one that asked gets it all."""
    asked: list[Any] = []

    def chunk(text: str) -> bytes:
        return (
            b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
            b'"delta":{"content":"' + text.encode() + b'"}}],"usage":null}\n\n'
        )

    usage = (
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    )
    body = chunk("a") + chunk("b") + usage + b"data: [DONE]\n\n"

    def handler(req: httpx2.Request) -> httpx2.Response:
        asked.append(json.loads(req.content).get("stream_options"))
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    fake_endpoint(handler)
    r = await post(chat_app, "/v1/chat/completions", json={**MSG, "stream": True})
    assert r.content == chunk("a") + chunk("b") + b"data: [DONE]\n\n"
    wants = {**MSG, "stream": True, "stream_options": {"include_usage": True}}
    r = await post(chat_app, "/v1/chat/completions", json=wants)
    assert r.content == body
    assert asked == [{"include_usage": True}, {"include_usage": True}]
