"""The cache's pure parts: keys, the semantic split, stream assembly and replay, the LRU."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shared.cache.base import Lookup, cache_directives
from shared.cache.keys import exact_key, scope_of, semantic_parts
from shared.cache.memory import MemoryStore
from shared.cache.sse import StreamAssembler, replay_events, words
from shared.context import Context
from shared.schemas import Operation

CHAT = {"model": "m", "messages": [{"role": "user", "content": "What is a GPU?"}]}


def test_stream_and_transport_fields_do_not_change_the_key() -> None:
    base = exact_key("a", Operation.CHAT, CHAT)
    streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}
    assert exact_key("a", Operation.CHAT, streamed) == base
    assert exact_key("a", Operation.CHAT, {**CHAT, "temperature": None}) == base
    assert exact_key("b", Operation.CHAT, CHAT) != base  # another caller
    assert exact_key("a", Operation.COMPLETIONS, CHAT) != base  # another operation
    assert exact_key("a", Operation.CHAT, {**CHAT, "model": "n"}) != base
    assert exact_key("a", Operation.CHAT, {**CHAT, "temperature": 0.5}) != base


def test_scope() -> None:
    assert scope_of("team-a", "caller") == "team-a"
    assert scope_of(None, "caller") == "anonymous"
    assert scope_of("team-a", "shared") == scope_of("team-b", "shared")


def test_semantic_split_keeps_everything_but_the_last_wording() -> None:
    def parts(messages: list[dict[str, Any]], scope: str = "a", **kw: Any) -> Any:
        return semantic_parts(
            scope, Operation.CHAT, {"model": "m", "messages": messages, **kw}, ignore_system=False
        )

    one = parts([{"role": "user", "content": "What is a GPU?"}])
    other = parts([{"role": "user", "content": "Explain GPUs"}])
    assert one.text == "What is a GPU?" and other.text == "Explain GPUs"
    assert one.context == other.context
    earlier = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    after = parts([*earlier, {"role": "user", "content": "What is a GPU?"}])
    assert after.context != one.context
    assert parts([{"role": "user", "content": "What is a GPU?"}], scope="b").context != one.context
    assert parts([{"role": "user", "content": "x"}], temperature=1.0).context != one.context
    assert parts([{"role": "assistant", "content": "x"}]) is None  # no user turn last
    image = [{"type": "image_url", "image_url": {"url": "data:..."}}]
    assert parts([{"role": "user", "content": image}]) is None
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]
    ignoring = semantic_parts(
        "a", Operation.CHAT, {"model": "m", "messages": system}, ignore_system=True
    )
    assert ignoring is not None
    assert ignoring.context == parts([{"role": "user", "content": "q"}]).context
    assert parts(system).context != ignoring.context


def test_cache_control_directives() -> None:
    assert cache_directives("No-Cache, max-age=0") == {"no-cache", "max-age"}
    assert cache_directives("") == set()


def _chunks(text: str, usage: bool = True) -> bytes:
    out = b""
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    out += (
        b"data: "
        + json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}).encode()
        + b"\n\n"
    )
    for piece in words(text):
        delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        out += b"data: " + json.dumps({**base, "choices": [delta]}).encode() + b"\n\n"
    end = {"index": 0, "delta": {}, "finish_reason": "stop"}
    out += b"data: " + json.dumps({**base, "choices": [end]}).encode() + b"\n\n"
    if usage:
        u = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        out += b"data: " + json.dumps({**base, "choices": [], "usage": u}).encode() + b"\n\n"
    return out + b"data: [DONE]\n\n"


def test_assembled_stream_replays_as_the_same_stream() -> None:
    text = "GPUs run many small cores in parallel."
    raw = _chunks(text)
    asm = StreamAssembler(Operation.CHAT)
    for i in range(0, len(raw), 7):  # lines split across network chunks
        asm.feed(raw[i : i + 7])
    body = asm.result()
    assert body is not None
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 7 and body["object"] == "chat.completion"
    events = replay_events(body, Operation.CHAT, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    datas = [json.loads(e[6:]) for e in events[:-1]]
    content = [c["choices"][0]["delta"].get("content") for c in datas if c["choices"]]
    assert "".join(x for x in content if x) == text
    assert len([x for x in content if x]) == len(text.split())  # one chunk per word
    assert datas[-1]["choices"] == [] and datas[-1]["usage"]["total_tokens"] == 7
    again = StreamAssembler(Operation.CHAT)
    again.feed(b"".join(events))
    assert again.result() == body


def test_incomplete_or_failed_streams_are_not_assembled() -> None:
    raw = _chunks("hello there")
    cut = StreamAssembler(Operation.CHAT)
    cut.feed(raw[: raw.index(b"[DONE]")])
    assert cut.result() is None
    failed = StreamAssembler(Operation.CHAT)
    failed.feed(raw[:40] + b'\n\ndata: {"error": {"message": "boom"}}\n\ndata: [DONE]\n\n')
    assert failed.result() is None


def test_tool_calls_are_assembled() -> None:
    base = {"id": "c", "created": 1, "model": "m"}
    calls = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get", "arguments": '{"ci'},
        },
        {"index": 0, "function": {"arguments": 'ty": "Paris"}'}},
    ]
    raw = b""
    for call in calls:
        raw += (
            b"data: "
            + json.dumps(
                {**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
            ).encode()
            + b"\n\n"
        )
    raw += (
        b"data: "
        + json.dumps(
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        ).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    asm = StreamAssembler(Operation.CHAT)
    asm.feed(raw)
    body = asm.result()
    assert body is not None
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "get", "arguments": '{"city": "Paris"}'}


def test_completions_replay() -> None:
    body = {
        "id": "x",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": " one two three", "finish_reason": "length"}],
    }
    events = replay_events(body, Operation.COMPLETIONS, include_usage=False)
    assert len(events) == 4  # three words and [DONE]
    asm = StreamAssembler(Operation.COMPLETIONS)
    asm.feed(b"".join(events))
    result = asm.result()
    assert result is not None and result["choices"][0]["text"] == " one two three"


def test_memory_store_is_a_bounded_lru_with_a_ttl() -> None:
    now = [0.0]
    store = MemoryStore(max_entries=2, max_bytes=1024, clock=lambda: now[0])
    ctx = Context.with_timeout(5)

    def req(key: str) -> Lookup:
        return Lookup(Operation.CHAT, {}, "a", key, ctx)

    async def run() -> None:
        await store.put(req("a"), b"1", 10)
        await store.put(req("b"), b"2", 10)
        assert await store.get(req("a")) is not None  # a is now the most recent
        await store.put(req("c"), b"3", 10)
        assert await store.get(req("b")) is None  # the least recently used went
        assert len(store) == 2
        now[0] = 11.0
        assert await store.get(req("a")) is None  # expired
        await store.put(req("big"), b"x" * 2000, 10)
        assert await store.get(req("big")) is None  # larger than the whole budget

    asyncio.run(run())


@pytest.mark.parametrize("field", ["logprobs", "echo"])
def test_unreplayable_requests_bypass(field: str) -> None:
    from shared.cache.base import _replayable

    assert not _replayable(Operation.CHAT, {**CHAT, field: True})
    assert _replayable(Operation.CHAT, CHAT)
