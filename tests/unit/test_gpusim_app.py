"""gpusim app in-process (httpx ASGITransport, no sockets): exact SSE bytes and envelopes."""

from __future__ import annotations

import json
import time

import httpx2
import pytest

from tools.gpusim import Config, build_app
from tools.gpusim.wire import ConnectionAborted

CHAT = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}


def client(**knobs: object) -> httpx2.AsyncClient:
    knobs = {"min_output_tokens": 3, "max_output_tokens": 3, **knobs}
    config = Config(ttft_base_ms=0, itl_ms=0, **knobs)  # type: ignore[arg-type]
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=build_app(config)),
                             base_url="http://gpusim")  # fmt: skip


async def test_chat_stream_bytes_are_sse_events_ending_with_done() -> None:
    async with client() as c:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        r = await c.post("/v1/chat/completions", json=body)
        plain = (await c.post("/v1/chat/completions", json=CHAT)).json()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    events = r.text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    # role chunk, 3 tokens, finish chunk, usage chunk
    assert len(chunks) == 6
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:4]]
    assert all(list(d) == ["content"] and d["content"] for d in deltas)
    assert "".join(d["content"] for d in deltas) == plain["choices"][0]["message"]["content"]
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                       "finish_reason": "stop"}  # fmt: skip
    assert chunks[5]["choices"] == [] and chunks[5]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:5])
    assert r.headers["x-request-id"] == chunks[0]["id"]


async def test_completion_usage_chunk_is_text_completion() -> None:
    async with client() as c:
        body = {"model": "local-model", "prompt": "x", "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        r = await c.post("/v1/completions", json=body)
    chunks = [json.loads(e[6:]) for e in r.text.split("\n\n")[:-2]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 1


async def test_unknown_route_and_method_use_the_openai_envelope() -> None:
    async with client() as c:
        missing = await c.get("/v2/whatever")
        wrong = await c.get("/v1/chat/completions")
    assert missing.status_code == 404 and set(missing.json()["error"]) >= {"message", "type"}
    assert wrong.status_code == 405 and "error" in wrong.json()


async def test_stream_options_without_stream_is_400() -> None:
    async with client() as c:
        options = {"include_usage": True}
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream_options": options})
        ok = await c.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert ok.status_code == 200
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


async def test_reset_without_a_tcp_transport_raises_in_process() -> None:
    async with client() as c:
        with pytest.raises(ConnectionAborted):
            await c.post("/v1/chat/completions", json=CHAT, headers={"x-gpusim-fail": "reset"})


async def test_bad_fault_header_is_400_and_admin_rejects_bad_specs() -> None:
    async with client() as c:
        r = await c.post("/v1/embeddings", json={"model": "local-model", "input": "x"},
                         headers={"x-gpusim-fail": "teapot"})  # fmt: skip
        bad = await c.post("/admin/faults", json={"type": "429", "count": 0})
        state = await c.post("/admin/faults", json={"type": "503", "count": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-gpusim-fail"
    assert bad.status_code == 400
    assert state.json()["scheduled"] == [
        {"type": "503", "count": 2, "for_s": None, "retry_after": 1.0, "after": None,
         "delay_s": 1.0}
    ]  # fmt: skip


async def test_stats_count_routes_by_template_but_not_admin_calls() -> None:
    async with client() as c:
        await c.get("/v1/models/local-model")
        await c.get("/v1/models/other")
        await c.get("/admin/stats")
        stats = (await c.get("/admin/stats")).json()
    assert stats["requests"] == {"/v1/models/{model}": {"200": 1, "404": 1}}


def _content(sse: str) -> str:
    """The text of a chat stream's content deltas."""
    out = []
    for event in sse.split("\n\n"):
        if event.startswith("data: {"):
            for choice in json.loads(event[6:])["choices"]:
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


async def test_a_partial_answer_is_continued_into_the_uncut_answer() -> None:
    """continue_final_message: the rest of the answer the prompt alone gets, whatever the
    cut (a token boundary or inside a token), as greedy decoding on a real model."""
    async with client(min_output_tokens=12, max_output_tokens=12) as c:
        whole = (await c.post("/v1/chat/completions", json=CHAT)).json()
        answer = whole["choices"][0]["message"]["content"]
        for cut in (1, len(answer) // 2, len(answer) - 1):
            body = {**CHAT, "stream": True, "stream_options": {"include_usage": True},
                    "continue_final_message": True, "add_generation_prompt": False,
                    "messages": [*CHAT["messages"],  # type: ignore[list-item]
                                 {"role": "assistant", "content": answer[:cut]}]}  # fmt: skip
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert answer[:cut] + _content(r.text) == answer
        both = await c.post("/v1/chat/completions", json={**body, "add_generation_prompt": True})
        user_last = await c.post("/v1/chat/completions", json={**CHAT,
                                 "continue_final_message": True, "add_generation_prompt": False})
    assert both.status_code == 400 and "add_generation_prompt" in both.json()["error"]["message"]
    assert user_last.status_code == 400


async def test_a_server_without_continuation_refuses_the_partial_answer() -> None:
    async with client(continue_final_message=False) as c:
        body = {**CHAT, "continue_final_message": True, "add_generation_prompt": False,
                "messages": [*CHAT["messages"], {"role": "assistant", "content": "a"}]}  # type: ignore[list-item]  # fmt: skip
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "continue_final_message"


async def test_stream_faults_are_acted_out_on_the_wire() -> None:
    streamed = {**CHAT, "stream": True}
    async with client(min_output_tokens=6, max_output_tokens=6) as c:
        clean = (await c.post("/v1/chat/completions", json=streamed)).text
        no_done = await c.post("/v1/chat/completions", json=streamed,
                               headers={"x-gpusim-fail": "no_done"})  # fmt: skip
        bad = await c.post("/v1/chat/completions", json=streamed,
                           headers={"x-gpusim-fail": "malformed", "x-gpusim-fail-after": "2"})
        slow = await c.post("/v1/chat/completions", json=streamed,
                            headers={"x-gpusim-fail": "slow_first_token",
                                     "x-gpusim-fail-delay": "0.2"})  # fmt: skip
        ctx = await c.post("/v1/chat/completions", json=streamed,
                           headers={"x-gpusim-fail": "context_length"})
        policy = await c.post("/v1/chat/completions", json=streamed,
                              headers={"x-gpusim-fail": "content_filter"})
        bare = await c.post("/v1/chat/completions", json=CHAT,
                            headers={"x-gpusim-fail": "429", "x-gpusim-retry-after": "none"})
    assert clean.endswith("data: [DONE]\n\n")
    assert no_done.text == clean.replace("data: [DONE]\n\n", "").replace(
        _ids(clean), _ids(no_done.text))
    events = bad.text.split("\n\n")
    broken = [e for e in events if e.startswith("data: {") and not e.endswith("}")]
    assert len(broken) == 1 and bad.text.endswith("data: [DONE]\n\n")
    assert slow.elapsed.total_seconds() >= 0.2 and _content(slow.text) == _content(clean)
    assert ctx.status_code == 400 and "maximum context length" in ctx.json()["error"]["message"]
    assert policy.status_code == 400 and policy.json()["error"]["code"] == "content_filter"
    assert policy.json()["error"]["innererror"]["content_filter_result"]["violence"]["filtered"]
    assert bare.status_code == 429 and "retry-after" not in bare.headers


def _ids(sse: str) -> str:
    return str(json.loads(sse.split("\n\n")[0][6:])["id"])


async def test_a_stalled_stream_hangs_then_resets() -> None:
    """(ASGITransport buffers a whole answer, so the e2e tests read the chunks themselves.)"""
    async with client(min_output_tokens=6, max_output_tokens=6, hang_s=0.3) as c:
        started = time.monotonic()
        with pytest.raises(ConnectionAborted):
            await c.post("/v1/chat/completions", json={**CHAT, "stream": True},
                         headers={"x-gpusim-fail": "stall", "x-gpusim-fail-after": "2"})
    assert time.monotonic() - started >= 0.3
