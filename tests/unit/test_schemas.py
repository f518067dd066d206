"""Request validation: unknown fields kept, bad input answered with param and status.

Bodies go the way the HTTP endpoints take them: ``read_body`` (the size limit), then
``decode_json`` and ``validate_payload`` (what ``Service.validate`` runs).
"""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.schemas import Operation, validate_payload
from shared.web import decode_json, read_body


def validated(op: Operation, raw: bytes, cap: int) -> dict[str, object]:
    return validate_payload(op, decode_json(raw), max_tokens_cap=cap)


def parse(body: object, op: Operation = Operation.CHAT, cap: int = 100) -> dict[str, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return validated(op, raw, cap)


def test_unknown_fields_are_preserved() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi", "name": "bob"}],
        "logprobs": True,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "vendor_extension": {"x": 1},
    }
    assert parse(body) == body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": -5}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": 10**9}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": "ten"}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": 7}, "temperature"),
        ({"model": 5, "messages": [{"role": "user"}]}, "model"),
    ],
)
def test_bad_chat_requests_name_the_param(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(body)
    assert info.value.status == 400
    assert info.value.param == param


def test_invalid_json_and_non_objects() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse(b"{nope")
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse([1, 2])


def _request(body: bytes, headers: list[tuple[bytes, bytes]]) -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


async def test_body_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        await read_body(_request(b"x" * 2000, []), 1024)  # streamed past the limit
    assert info.value.status == 413
    declared = [(b"content-length", b"2000")]
    with pytest.raises(PayloadTooLarge):
        await read_body(_request(b"x" * 2000, declared), 1024)  # refused before reading
    assert await read_body(_request(b"x" * 1024, []), 1024) == b"x" * 1024


def test_completions_and_embeddings_inputs() -> None:
    assert parse({"model": "m", "prompt": "hi"}, Operation.COMPLETIONS)["prompt"] == "hi"
    with pytest.raises(InvalidRequest):
        parse({"model": "m", "prompt": []}, Operation.COMPLETIONS)
    assert parse({"model": "m", "input": ["a", "b"]}, Operation.EMBEDDINGS)["input"] == ["a", "b"]
    with pytest.raises(InvalidRequest) as info:
        parse({"model": "m"}, Operation.EMBEDDINGS)
    assert info.value.param == "input"


M = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]},
         "messages[0].tool_call_id"),
        ({"model": "m", "messages": [{"role": "user", "tool_calls": []}]},
         "messages[0].tool_calls"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0].text"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": M, "tools": "x"}, "tools"),
        ({"model": "m", "messages": M, "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"model": "m", "messages": M, "tools": [{"type": "web"}]}, "tools[0].type"),
        ({"model": "m", "messages": M,
          "tools": [{"type": "function", "function": {"name": "bad name"}}]},
         "tools[0].function.name"),
        ({"model": "m", "messages": M, "tools": [TOOL] * 129}, "tools"),
        ({"model": "m", "messages": M, "tool_choice": "auto"}, "tool_choice"),
        ({"model": "m", "messages": M, "tools": [TOOL], "tool_choice": "maybe"}, "tool_choice"),
        ({"model": "m", "messages": M, "tools": [TOOL], "tool_choice": {"type": "function"}},
         "tool_choice.function"),
        ({"model": "m", "messages": M, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m", "messages": M, "stop": [1]}, "stop[0]"),
        ({"model": "m", "messages": M, "n": 0}, "n"),
        ({"model": "m", "messages": M, "n": 129}, "n"),
        ({"model": "m", "messages": M, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"model": "m", "messages": M, "top_logprobs": 2}, "top_logprobs"),
        ({"model": "m", "messages": M, "presence_penalty": 3}, "presence_penalty"),
        ({"model": "m", "messages": M, "logit_bias": {"50256": -101}}, "logit_bias"),
        ({"model": "m", "messages": M, "response_format": {"type": "json_schema"}},
         "response_format.json_schema"),
        ({"model": "m", "messages": M, "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": M, "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "messages": M, "stream": "yes"}, "stream"),
    ],
)  # fmt: skip
def test_openai_documented_rules_name_the_param(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(body, cap=10_000) if len(json.dumps(body)) < 9000 else parse_big(body)
    assert info.value.status == 400
    assert info.value.param == param, info.value.message


def parse_big(body: object, op: Operation = Operation.CHAT) -> dict[str, object]:
    return validated(op, json.dumps(body).encode(), 10_000)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": ["x"] * 2049}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": ["a", ""]}, "input[1]"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [[1, 2], []]}, "input[1]"),
        ({"model": "m", "input": [1, -2]}, "input"),
        ({"model": "m", "input": [1] * 8193}, "input"),
        ({"model": "m", "input": [[1] * 8000] * 38}, "input"),  # 304,000 tokens in all
        ({"model": "m", "input": ["a", [1]]}, "input[1]"),
        ({"model": "m", "input": [True]}, "input[0]"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
    ],
)
def test_embedding_inputs_follow_openai_limits(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_big(body, Operation.EMBEDDINGS)
    assert info.value.param == param, info.value.message


def test_valid_shapes_pass_with_every_field_kept() -> None:
    chat = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": ["a", "b", "c", "d"],
        "logprobs": True,
        "top_logprobs": 20,
        "n": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        "vendor": {"anything": [1, 2]},
    }  # fmt: skip
    assert parse(chat) == chat
    for inp in ("x", ["a", "b"], [1, 2, 3], [[1], [2, 3]], ["x"] * 2048):
        body = {"model": "m", "input": inp}
        assert parse_big(body, Operation.EMBEDDINGS) == body
    completion = {"model": "m", "prompt": [[1, 2], [3]], "logprobs": 5, "best_of": 3, "n": 2}
    assert parse(completion, Operation.COMPLETIONS) == completion


def test_nesting_deeper_than_the_limit_is_400_not_a_recursion_error() -> None:
    for depth in (70, 5_000, 100_000):
        raw = b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(InvalidRequest, match="nested"):
            validated(Operation.CHAT, raw, 10)
