"""Request validation: unknown fields kept, bad input answered with param and status."""

from __future__ import annotations

import json

import pytest

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.schemas import Operation, parse_request


def parse(body: object, op: Operation = Operation.CHAT, cap: int = 100) -> dict[str, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(op, raw, max_body_bytes=10_000, max_tokens_cap=cap)


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


def test_body_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        parse_request(Operation.CHAT, b"x" * 2000, max_body_bytes=1024, max_tokens_cap=10)
    assert info.value.status == 413


def test_completions_and_embeddings_inputs() -> None:
    assert parse({"model": "m", "prompt": "hi"}, Operation.COMPLETIONS)["prompt"] == "hi"
    with pytest.raises(InvalidRequest):
        parse({"model": "m", "prompt": []}, Operation.COMPLETIONS)
    assert parse({"model": "m", "input": ["a", "b"]}, Operation.EMBEDDINGS)["input"] == ["a", "b"]
    with pytest.raises(InvalidRequest) as info:
        parse({"model": "m"}, Operation.EMBEDDINGS)
    assert info.value.param == "input"
